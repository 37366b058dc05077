"""Real test peers: network namespaces with a firewall, listeners, directory servers."""
