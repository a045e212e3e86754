"""Where a model comes from and what is inside it: sources (hub id, local dir, config), the
checkpoint check, the component map (vision encoder, merger, language model, head), the module
tree, parameter reports, inspection and the upstream support table.

May import: the leaves (`errors`, `fsutil`, `quiet`) only."""
