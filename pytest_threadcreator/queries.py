"""Query budgets: count the SQL statements a block of test code makes, per connection and in total."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["QueryCounter"]


@dataclass
class QueryCounter:
    """Statements seen while a ``count_queries()`` block was open, in the order they ran.

    Counts every statement the database saw from the plugin's connections and the test's
    engines: ``BEGIN``/``COMMIT`` included, so round trips show up as they happen.
    """

    statements: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, connection: str, sql: str) -> None:
        """Note one statement (thread-safe: the SQLite writer calls this from its thread)."""
        with self._lock:
            self.statements.append((connection, " ".join(sql.split())))

    @property
    def total(self) -> int:
        """Number of statements."""
        return len(self.statements)

    @property
    def per_connection(self) -> dict[str, int]:
        """Statements per connection label."""
        return dict(Counter(conn for conn, _ in self.statements))

    def assert_max(self, n: int) -> None:
        """Raise AssertionError listing the statements when there were more than ``n``."""
        __tracebackhide__ = True
        if self.total > n:
            raise AssertionError(
                f"expected at most {n} SQL statement(s), {self.total} ran:\n" + self.listing()
            )

    def assert_exactly(self, n: int) -> None:
        """Raise AssertionError listing the statements unless exactly ``n`` ran."""
        __tracebackhide__ = True
        if self.total != n:
            raise AssertionError(
                f"expected exactly {n} SQL statement(s), {self.total} ran:\n" + self.listing()
            )

    def listing(self, limit: int = 50) -> str:
        """The statements, numbered, per connection (truncated to ``limit``)."""
        lines = [
            f"  {i:>3}. [{conn}] {sql[:200]}"
            for i, (conn, sql) in enumerate(self.statements[:limit], 1)
        ]
        if self.total > limit:
            lines.append(f"  … and {self.total - limit} more")
        return "\n".join(lines) if lines else "  (none)"

    def __len__(self) -> int:
        return self.total
