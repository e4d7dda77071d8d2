"""The contenders the benchmark runs beside the service, each a uvicorn factory in its own process.

They serve the same three reads with the same JSON (a page's ``next_cursor`` aside), so a
difference in throughput is the cost of how each is built:

- ``twin``: the way this service is usually built: FastAPI, Pydantic response models and the
  SQLAlchemy async ORM with eager loading. The service's claim is that it beats this.
- ``floor``: the service's own SQL on a bare asyncpg pool in a bare Starlette app, hand-written.
  What the service's machinery (auth, gate, error mapping, metrics) costs shows against it. It
  also places and pays orders, hand-written on a write pool of its own (``write_floor``): what the
  command side's ORM and machinery cost shows against that.
- ``ceiling``: no database and no framework, one constant body: what uvicorn and the load
  generator can do on this machine at all.
"""

CONTENDERS: dict[str, str] = {
    "twin": "bench.contenders.twin:create_app",
    "floor": "bench.contenders.floor:create_app",
    "ceiling": "bench.contenders.ceiling:create_app",
}
