"""Redis state of one tenant: key names (`keys`), return codes (`codes`), and the atomic Lua
steps with their typed wrappers (`scripts`, Lua sources in `lua/`)."""

from callcenter.store.codes import RC, Result
from callcenter.store.keys import Keys
from callcenter.store.scripts import OTHER_SCRIPTS, Store, load_source, now_ms, report_script

__all__ = ["OTHER_SCRIPTS", "RC", "Keys", "Result", "Store", "load_source", "now_ms", "report_script"]
