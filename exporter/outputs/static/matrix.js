// The matrix page: filters (also kept in the URL), cell details, refresh in place.
const form = document.getElementById('filters');
function params(){ return new URLSearchParams(location.search); }
function syncForm(){ const p = params(); for (const el of form.elements) el.value = p.get(el.name) || ''; }
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
  const p = new URLSearchParams();
  for (const el of form.elements) if (el.value) p.set(el.name, el.value);
  history.replaceState(null, '', location.pathname + (p.toString() ? '?' + p : ''));
  applyFilters();
});
document.addEventListener('click', ev => {
  const td = ev.target.closest && ev.target.closest('td.cell');
  if (td){ const d = td.querySelector('.detail'); if (d) d.hidden = !d.hidden; }
});
async function refresh(){
  try {
    const open = [...document.querySelectorAll('td.cell .detail:not([hidden])')].map(d => d.closest('td').dataset.target);
    const r = await fetch('matrix/fragment', {cache: 'no-store'});
    if (!r.ok) throw new Error(r.status);
    const data = await r.json();
    document.getElementById('grid').innerHTML = '<p id=summary></p>' + data.table;
    document.getElementById('summary').textContent = data.summary;
    document.getElementById('changes').outerHTML = data.changes;
    document.getElementById('updated').textContent = data.updated;
    open.forEach(t => document.querySelectorAll(`td.cell[data-target="${CSS.escape(t)}"] .detail`).forEach(d => d.hidden = false));
    applyFilters();
  } catch (e) { document.getElementById('updated').textContent += ' (refresh failed)'; }
}
syncForm(); applyFilters();
if (REFRESH_MS > 0) setInterval(refresh, REFRESH_MS);
