"""``python -m bench``: the service measured against the ways people build it instead.

Everything here is the benchmark's own: the contenders it runs beside the service
(``bench.contenders``), the load it applies (wrk for reads, ``bench.load`` for commands), the
scenarios (``bench.scenarios``) and the report (``bench.report``). The service never imports it.
"""
