"""Fused trials: configurations of one family that differ only in `Param(fusable=True)` keys, trained as one
batched model (plain PyTorch, no Ray), and neighbour/transform look-ups evaluated in one pass.

- `grouping`: which configurations may share a model, and how many fit a device's memory;
- `group.FusedGroup`: the members' training, reports, checkpoints and export (each member as its trial alone);
- `net.FusedNet`: the fused layers;
- `lookup`: every knn / features configuration over one neighbour table or embedding in one pass;
- `rungs.Rungs`: ASHA's stop/continue rule for members, scored against every trial and member at a rung.
"""
