"""`serve` and `demo`: run the agent (the demo: its mesh of agents) and serve /metrics, the API and the matrix
page until a signal."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from exporter.compose import build_agent, build_demo_agents
from exporter.settings import Settings

log = logging.getLogger("exporter")


def run_serve(settings: Settings, *, on_stop: Callable[[Callable[[], None]], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, or until the function handed to `on_stop` is called (the Windows
    service's stop request, from another thread): either way the agent stops and flushes its state."""
    import uvicorn

    from exporter.outputs.app import create_app
    from exporter.outputs.webconfig import BasicAuth, ResponseHeaders, checked_protocol, load_web_config

    web_settings = settings.web
    assert web_settings is not None, "serve and demo have web settings"
    web = load_web_config(web_settings.config_file) if web_settings.config_file else None
    agent = build_agent(settings)
    local_agents = build_demo_agents(settings)  # the demo's mesh, in this process; none otherwise
    agent.exposition.join(one.exposition for one in local_agents)  # one /metrics for all of them
    app: Any = create_app(
        agent,
        agent.exposition,
        mesh_settings=settings.mesh,
        planner=agent.planner,
        api_rate=web_settings.api_rate,
        local_agents=local_agents,
    )
    tls_kwargs: dict[str, Any] = {}
    if web is not None:
        if web.basic_auth:
            app = BasicAuth(app, web.users)
        if web.headers:
            app = ResponseHeaders(app, web.headers)
        if web.tls is not None:
            tls_kwargs = web.tls.uvicorn_kwargs()
            if web.tls.allowed_sans:
                tls_kwargs["http"] = checked_protocol(web.tls.allowed_sans)
    config = uvicorn.Config(
        app,
        host=web_settings.host,
        port=web_settings.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        **tls_kwargs,
    )
    if web is not None and web.tls is not None:
        config.load()
        assert config.ssl is not None
        web.tls.apply(config.ssl)
    server = _graceful_server_class()(config)
    if on_stop is not None:

        def stop() -> None:
            server.should_exit = True

        on_stop(stop)
    agent.start()  # first: in the demo it owns the listeners the others probe
    for one in local_agents:
        one.start()
    log.info("listening on %s:%d", web_settings.host, web_settings.port)
    try:
        server.run()
    finally:
        for one in reversed(local_agents):
            one.stop()
        agent.stop()
    return 0


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its shutdown, which would kill us before our own cleanup
        (stopping the prober, flushing state) runs; here the signal only asks for a graceful exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer
