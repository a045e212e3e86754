"""Built-in freeze presets (YAML), shipped inside the package as `vlmsurgeon.presets`."""
