"""The HTTP API (`ftdeploy serve`): serving endpoints for the app that asks which model to use,
operator endpoints that mirror the CLI, and the OpenAI webhook receiver, in one ASGI app.

Every handler is a door: it parses with a pydantic model, checks the key (a dependency each route
declares), opens one unit of work, calls the registry, and returns a response model. Errors are
RFC 9457 problem documents, mapped in one place (`worker.http.problems`).
"""
