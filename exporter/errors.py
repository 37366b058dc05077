"""The exporter's own exceptions, to be caught by meaning. Each carries the fix in its message."""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ConfigError(ExporterError):
    """The configuration or inventory given to us is wrong; the message says where and how to fix it."""


class DiscoveryError(ExporterError):
    """An inventory source (LDAP, DNS) could not produce an inventory."""
