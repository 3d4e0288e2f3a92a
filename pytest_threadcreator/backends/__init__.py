"""Where databases come from: :mod:`.base` (the interface), :mod:`.registry` (the kinds),
:mod:`.sqlite` and :mod:`.postgresql`."""
