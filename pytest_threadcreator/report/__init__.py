"""What the plugin tells the user: the report data (:mod:`.data`, the source of truth), the
terminal summary (:mod:`.terminal`) and the HTML page (:mod:`.html`). Pytest-free."""
