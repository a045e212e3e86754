"""The training loop and what it needs: run options, the Trainer pieces and callbacks, the loss,
model preparation (frozen blocks held in 16 bits, the CPU heap's threshold), resume, the run
lock, telemetry (including answers scored during training, through `use/`) and distributed
engines. A new objective goes here.

May import: `use/`, `ship/`, `plan/`, `data/`, `recipe/`, `model/` and the leaves; not `cli/`."""
