"""Fused trials: configurations of one family that differ only in `Param(fusable=True)` keys, trained as one
batched model (plain PyTorch, no Ray), and neighbour / embedding look-ups evaluated in one pass.

- `grouping`: which configurations may share a model (`signature`, `plan_groups`) and how many fit a device's
  memory (`member_bytes`, `fitting`);
- `group.FusedGroup`: the members' training, per-member reports, checkpoints and export, each member exactly its
  trial alone (bitwise on the CPU at one thread);
- `net.FusedNet`: the fused layers;
- `lookup.evaluate`: every knn / features configuration over one neighbour table or embedding in one pass;
- `rungs.Rungs`: ASHA's stop/continue rule for members, scored against every trial and member at a rung.

How a search runs a group (the trainable's side; one Ray trial per group):

    group = FusedGroup(family, [MemberSpec(trial_id, config), ...], data.info, ctx)
    for each member with a checkpoint: group.load_member_state(trial_id, state)   # resume, per member
    for reports in group.fit(data, max_epochs):                # one epoch of every member still training
        for r in reports:                                      # MemberReport: key, metrics | error, done
            save group.member_state(r.key) as that member's checkpoint (plain `TorchLearner` format)
            report r.metrics as trial r.key's result (the keys a plain trial reports)
            if rungs.report(r.key, epoch, best score so far): group.stop(r.key)   # ASHA for members
            if r.done or stopped: rungs.complete(r.key, epoch, score)
        (a search sends a group's epoch to its one Rungs actor in one call: `rungs.decide`)

The driver owns what is shared between groups: the trial ids (one per configuration, asked of the sampler as
that many trials), the one `Rungs` record every trial and member reports to, and where each member's results
and checkpoints go. `group.export(trial_id)` is a plain learner holding a member's weights (bundles, predict).
"""
