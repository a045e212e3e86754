"""What trains: freeze presets (validated YAML; the shipped ones are the `vlmsurgeon.presets`
package data) and applying a preset or `--freeze` to a model, with the one 4-bit rule.

May import: `model/` and the leaves."""
