"""KFP components, one per pipeline stage.

Each is a lightweight Python component (`@dsl.component`) that runs in the
SpaceNit image (`components.image.IMAGE`, or `IMAGE_CUDA` where the pipeline
asks for GPUs) and only plumbs typed KFP artifacts and parameters into the
stage function of the `spacenit` package. Under
`kfp.local.SubprocessRunner(use_venv=False)` the same components run in the
current virtual environment. Import each from its module (`components.convert`, ...);
this package imports nothing, so `python -m components.image` runs cleanly.
"""
