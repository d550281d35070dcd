"""The request path of a model service: what the runtime image runs for every request.

app (the routes of `routes/` over one `ModelService`), the guard in front of them, the
parsing (bodies, inputs, entities, tensors), the models (store, runtime, routing), and what a
request leaves behind (predlog, telemetry, accesslog). Imports contract/, never pipelines/.
"""
