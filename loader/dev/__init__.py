"""Development tools, not needed to use pgscore on a database of one's own:
a throwaway local PostgreSQL with the server runtime (``pgscore db``:
:mod:`.localdb`, which installs the runtime with :mod:`.runtime`), synthetic
Telco-like profiles and demo models (:mod:`.demo_data`, :mod:`.seed`), and
the demo (``pgscore demo``: :mod:`.demo`). The benchmark is
:mod:`pgscore.bench`.
"""
