"""Export: the pipeline (staging, parity check, manifest) and its typed config; the writers live with their
runtimes in lowformer/engines/<name>/."""

from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.export(...)` stays the API function
