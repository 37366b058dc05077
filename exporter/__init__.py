"""exchange-firewall-exporter: proves that every network path an Exchange organisation needs is open."""

__version__ = "0.1.0"
