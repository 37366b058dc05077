"""Real test peers (network namespaces with a firewall, listeners, directory servers, Prometheus) and the
helpers the test files share: sample organisations, the service and `check` as processes, /metrics
reading, waiting, Chromium. Test files import from here, never from one another."""
