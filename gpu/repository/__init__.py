"""The model repository: what is on disk and what a model's configuration says.

- :mod:`.scan` lists models and version directories and fingerprints them (no protobuf).
- :mod:`.schema` loads Triton's ``ModelConfig`` protobuf schema.
- :mod:`.config_parse` parses ``config.pbtxt`` and JSON overrides into Triton's JSON form.
- :mod:`.config_complete` and :mod:`.config_validate` apply Triton's defaults and checks.
- :mod:`.model_config` is the typed, read-only view the engine uses at run time.
- :mod:`.file_override` writes the load API's ``file:`` parameters into a private folder.

Nothing here runs model code or holds model state.
"""
