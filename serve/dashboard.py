"""What ``GET /dashboard`` shows: the latest harm-metrics report (``harmgate report RUN_DIR``'s HTML).

In order: ``service.dashboard_path`` if that file exists, else the ``report.html`` published with the served
version (a registry attachment: listed with its sha256 in the approved manifest, so it is served only if the
approval verifies and the bytes match), else nothing (404 with a message saying where it looked and why).
A verified registry report is kept in memory for that version.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from gates.registry import Registry, RegistryError, VersionNotFound

log = logging.getLogger("harmgate.serve")
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Report:
    html: bytes
    source: str


class Dashboard:
    def __init__(self, path: str | None, registry: Registry | None) -> None:
        self.path = Path(path) if path else None
        self.registry = registry
        self._cache: dict[tuple[str, str], Report] = {}
        self._lock = threading.Lock()

    def _where(self, name: str, version: str) -> str:
        assert self.registry is not None
        return f"s3://{self.registry.objects.bucket}/{self.registry.file_key(name, version, 'harmgate/' + REPORT_NAME)}"

    def find(self, name: str | None, version: str | None) -> tuple[Report | None, list[str]]:
        """(the report, or None and what was tried: each place with why it gave nothing)."""
        tried = []
        if self.path is not None:
            if self.path.is_file():
                return Report(self.path.read_bytes(), str(self.path)), []
            tried.append(f"{self.path} (no such file)")
        if self.registry is None or not name or not version:
            return None, tried + ["the registry (no version is being served)"]
        with self._lock:
            if (name, version) in self._cache:
                return self._cache[(name, version)], []
        where = self._where(name, version)
        try:
            data = self.registry.fetch_attachment(name, version, REPORT_NAME)
        except VersionNotFound:
            return None, tried + [f"{where} (not published with {name}:{version})"]
        except RegistryError as err:  # tampered, unapproved, or the store is down: never serve it unverified
            log.warning("not serving the dashboard of %s:%s: %s", name, version, err)
            return None, tried + [f"{where} ({err})"]
        report = Report(data, where)
        with self._lock:
            self._cache[(name, version)] = report
        return report, []
