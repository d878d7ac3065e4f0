"""The REST API: FastAPI dependencies, the error table, the audit middleware, and one
router per resource.

    deps          Annotated dependency aliases: services (RegistryDep, SessionFactoryDep, ...)
                  and the one auth idiom (ViewerDep / OperatorDep / AdminDep)
    errors        domain error -> HTTP status (status_for) and the app's error handler
    audit         AuditMiddleware and `note()` for mutating calls
    http_range    single-range `Range` support for in-memory bodies
    routes/       one module-level router per resource; ROUTERS in mounting order
"""

__all__: list[str] = []
