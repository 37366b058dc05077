// The matrix page: filters and the open cell (both kept in the URL), the time control, refresh in place.
const form = document.getElementById('filters');
const FILTERS = ['site', 'role', 'state'];
function params(){ return new URLSearchParams(location.search); }
function syncForm(){ const p = params(); for (const el of form.elements) el.value = p.get(el.name) || ''; }
function setParams(changes){
  const p = params();
  for (const [k, v] of Object.entries(changes)) { if (v) p.set(k, v); else p.delete(k); }
  history.replaceState(null, '', location.pathname + (p.toString() ? '?' + p : ''));
}
function matches(el, site, role, state){
  if (site && el.dataset.site !== site) return false;
  if (role && el.dataset.role !== role) return false;
  if (state){
    const states = (el.dataset.state || '').split(' ');
    if (state === 'problem') return states.some(s => s !== 'open' && s !== 'pending' && s !== 'none' && s !== '');
    return states.includes(state);
  }
  return true;
}
function applyFilters(){
  const p = params(), site = p.get('site') || '', role = p.get('role') || '', state = p.get('state') || '';
  const cols = new Set();
  document.querySelectorAll('#matrix td.cell').forEach(td => {
    const ok = matches(td, site, role, state);
    td.classList.toggle('filtered-out', !ok);
    if (ok) cols.add(td.dataset.target);
  });
  document.querySelectorAll('#matrix [data-target]').forEach(el => { el.hidden = !cols.has(el.dataset.target); });
  document.querySelectorAll('#matrix thead th[data-site][colspan]').forEach(th => {
    const n = [...document.querySelectorAll('#matrix thead th[data-target]')]
      .filter(t => t.dataset.site === th.dataset.site && !t.hidden).length;
    th.hidden = n === 0; if (n) th.colSpan = n;
  });
  document.querySelectorAll('#matrix tbody tr').forEach(tr => {
    tr.hidden = ![...tr.querySelectorAll('td.cell')].some(td => !td.hidden && !td.classList.contains('filtered-out'));
  });
}
form.addEventListener('change', () => {
  const changes = {};
  for (const el of form.elements) if (FILTERS.includes(el.name)) changes[el.name] = el.value;
  setParams(changes);
  applyFilters();
});
// a cell: its source (the row) and target (the column)
function whereIs(td){ return [td.closest('tr').dataset.source, td.dataset.target]; }
function cellAt(source, target){
  const row = [...document.querySelectorAll('#matrix tbody tr')].find(tr => tr.dataset.source === source);
  return row ? [...row.querySelectorAll('td.cell')].find(td => td.dataset.target === target) : undefined;
}
function setOpen(td, open){
  const button = td.querySelector('button.open'), detail = td.querySelector('.detail');
  if (!button || !detail) return;
  detail.hidden = !open;
  button.setAttribute('aria-expanded', open ? 'true' : 'false');
}
document.addEventListener('click', ev => {
  const button = ev.target.closest && ev.target.closest('td.cell button.open');
  if (!button) return;
  const td = button.closest('td');
  const open = button.getAttribute('aria-expanded') !== 'true';
  setOpen(td, open);
  const [source, target] = whereIs(td);
  setParams(open ? {source, target} : {source: '', target: ''});
});
function openLinked(){
  const p = params(), source = p.get('source'), target = p.get('target');
  if (!source || !target) return;
  const td = cellAt(source, target);
  if (!td) return;
  setOpen(td, true);
  td.classList.add('linked');
  td.scrollIntoView({block: 'nearest', inline: 'nearest'});
  const button = td.querySelector('button.open');
  if (button) button.focus({preventScroll: true});
}
// the time control: a past moment is a new page (the server asks Prometheus for it)
const when = document.getElementById('when');
if (when){
  when.addEventListener('click', ev => {
    const b = ev.target.closest && ev.target.closest('button[data-ago]');
    if (!b) return;
    const ago = Number(b.dataset.ago);
    const p = params();
    if (ago > 0) p.set('at', String(Math.floor(Date.now() / 1000) - ago)); else p.delete('at');
    location.search = p.toString();
  });
  when.addEventListener('submit', ev => {
    ev.preventDefault();
    const v = when.elements.at.value;  // YYYY-MM-DDTHH:MM, read as UTC
    if (!v) return;
    const p = params(); p.set('at', v + ':00Z'); location.search = p.toString();
  });
}
async function refresh(){
  try {
    const open = [...document.querySelectorAll('td.cell button.open[aria-expanded="true"]')].map(b => whereIs(b.closest('td')));
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('td.cell');
    const keep = focused ? whereIs(focused) : null;
    const r = await fetch('matrix/fragment' + location.search, {cache: 'no-store'});
    if (!r.ok) throw new Error(r.status);
    const data = await r.json();
    document.getElementById('grid').innerHTML = '<p id=summary></p>' + data.table;
    document.getElementById('summary').textContent = data.summary;
    document.getElementById('changes').outerHTML = data.changes;
    document.getElementById('updated').textContent = data.updated;
    open.forEach(([s, t]) => { const td = cellAt(s, t); if (td) setOpen(td, true); });
    const p = params();
    if (p.get('source') && p.get('target')){ const td = cellAt(p.get('source'), p.get('target')); if (td) td.classList.add('linked'); }
    if (keep){ const td = cellAt(keep[0], keep[1]); const b = td && td.querySelector('button.open'); if (b) b.focus({preventScroll: true}); }
    applyFilters();
  } catch (e) { document.getElementById('updated').textContent += ' (refresh failed)'; }
}
syncForm(); applyFilters(); openLinked();
if (REFRESH_MS > 0) setInterval(refresh, REFRESH_MS);
