"""``top``: ToP, constraint-aware and ranking-distilled token pruning (Li et al., KDD 2023).

What is learned
---------------
At every pruning layer, the alive tokens other than [CLS] are ranked by the attention they
receive (:func:`~top.pruning.base.attention_token_scores`) and split into ``bin_num`` equal rank
bins: a token of rank ``r`` (0 = most important) among ``a`` candidates falls into bin
``floor(r * bin_num / a)`` (exact integer arithmetic). Each bin has a hard-concrete gate
(:class:`~top.pruning.l0.HardConcreteGate`), and each pruning layer has one more gate that
decides whether the layer prunes at all (the coarse-to-fine layer selection of ToP §3.3,
``pruner_z`` in the reference; ``layer_gates: false`` removes it). A token's keep value is
``1 - (1 - z_bin) * g_layer`` where
``g_layer`` is the layer gate made binary with a straight-through estimator. A token whose keep
value is 0 is dropped; otherwise, in training (mask mode), the layer output is multiplied by
it, which is how the gates receive gradients from the task. At evaluation every gate is
deterministic (:meth:`HardConcreteGate.deterministic`), so a layer keeps a fixed set of rank
bins: :meth:`ToP.export` writes these 0/1 bin masks and :meth:`ToP.inference_selectors`
rebuilds selectors that make exactly the same hard decisions without any gate module.

Mapping onto this harness's layers
----------------------------------
The reference decides "at layer ``i``" with layer ``i - 1``'s attention and drops the tokens
before layer ``i`` runs. Here the selector of layer ``l`` runs right after layer ``l``'s
self-attention, with layer ``l``'s probabilities, and its dropped tokens skip layer ``l``'s
feed-forward block and every later layer. So the reference's location ``i`` is our layer
``l = i - 1``: the same scores decide, and the dropped tokens additionally save layer ``l``'s
feed-forward block (docs/design.md FLOPs convention). The reference's default locations ``2..11``
of BERT-base become ``prune_layers = 1..L-2`` here (derived from the model's depth ``L``); its
alternative ``3..11`` is ``2..L-2``. Ranking distillation in the reference applies to the scores
of layers ``1 .. L//3 - 1`` (``range(1, len(pred_scores) // 3)``), i.e. the scores used by its
first pruning locations; the same layer indices here (``rank_distill_layers``).

Constraint (ToP §3.3, Appendix)
-------------------------------
A bin's tokens survive unless the layer prunes and the bin's gate is 0, so bin ``b`` of
pruning layer ``l`` survives with probability ``q_b = 1 - (1 - P(z_b > 0)) * P(g_l > 0)``. An
example of real length ``N`` is followed layer by layer: ``m_{-1} = N`` and, at a pruning layer
with ``a = m_{l-1} - 1`` candidates ([CLS] is always kept), ``m_l = 1 + sum_b q_b occ_b(a)``,
where ``occ_b(a) = ceil((b+1) a / B) - ceil(b a / B)`` is the exact number of candidates in
bin ``b`` (:func:`bin_occupancy`; interpolated linearly between integers, so ``m_l`` is
differentiable in the gates of this and earlier layers); ``m_l = m_{l-1}`` elsewhere. The
expected FLOPs use :mod:`top.measure.flops` exactly as the evaluation does: attention of layer ``l`` at
``m_{l-1}``, feed-forward at ``m_l``, plus the task head; the dense FLOPs use the same formula at
``N``. For deterministic gates (``q_b`` in {0, 1}) the counts are the real ones at every
length, so the FLOPs the constraint sees are exactly those evaluated (a test checks this).

The reference uses ``m_l = 1 + (N - 1) prod_j r_j`` with a mean keep ratio ``r`` per layer,
which assumes every bin holds ``a / B`` tokens. At GLUE lengths that is far off: with 25 bins, a
13-token SST-2 training row has only 12 occupied bins, and for the same gates that formula said
0.49 sparsity where the exact count gives 0.43.

The expected sparsity ``s = 1 - sum(expected) / sum(dense)`` (``sparsity_average: per_example``
gives the reference's mean of per-example ratios) is taken over the lengths that
``flops_lengths`` names: each batch's (the reference), every training row's, or the validation
split's token counts (where FLOPs are reported). :meth:`ToP.prepare` refuses a target that
those lengths cannot reach. With the target ``t`` ramped linearly from ``start_sparsity`` to
``target_sparsity`` over ``lagrangian_warmup_epochs``, the Lagrangian
``lambda_1 (s - t) + lambda_2 (s - t)^2`` is added to the loss; the gates minimise it and the
multipliers maximise it (gradient ascent: their optimiser group has ``maximize=True``). With
``s < t`` the ascent drives ``lambda_1`` negative and ``lambda_2`` positive, so the penalty and
its pull towards sparsity grow until ``s`` reaches ``t``.

The multipliers keep ``s`` oscillating around ``t`` rather than on it, and the deterministic
gates round each layer to whole bins; with ``calibrate`` (the default) the end of the ``prune``
stage moves whole bins, greedily, until the exact FLOPs on the constraint's lengths are as
close to the target as one-bin moves get (:meth:`ToP.calibrate`). (In the SST-2 2x benchmark
run the last 130 steps' expected sparsity ranged over 0.486-0.516 for a 0.5 target: +-3% of
the reduction at 2x, +-6% at 4x.)

Losses (reference ``trainer.py``)
---------------------------------
* logit distillation ``KL(softmax(t / T) || softmax(s / T)) * T^2`` (``T = 2``), which replaces the
  task loss for classification and span extraction (the task loss keeps weight 1 and distillation
  is off for regression, as the reference does for STS-B);
* ranking distillation (:func:`~top.pruning.ranking.ranking_distillation_loss`, LambdaLoss ARP-2
  on the teacher's top-20 tokens) between the teacher's final-layer token scores and each
  distilled layer's scores, summed over layers, weighted by
  ``rank_distill_weight * max(0.01, 1 - warmup progress)``. As in the reference
  (``rank_padding: reference``), every list has ``K = min(rank_topk, longest row's tokens
  but [CLS])`` slots, shorter rows' filled with padding slots of relevance 0 and score 0, and
  each row's loss is divided by ``K^2``. Unlike the reference, only tokens still alive at the
  distilled layer are ranked (dropped ones have no score here); at a later distilled layer a
  row's dropped tokens therefore count as padding slots;
* the Lagrangian above.

Optimiser (reference ``trainer.py``): the encoder's gradients are clipped to
``train.max_grad_norm``, the gates' and the multipliers' never (their groups set ``"clip":
False``); the embeddings are left out of the optimiser in both stages (``freeze_embeddings``),
and their gradients count in the clipping norm as in the reference.

Stages: ``prune`` (model, gates and multipliers trained jointly) and, when
``finetune_epochs > 0``, ``finetune`` (the gates frozen at their deterministic values, logit
distillation only), the reference's optional fine-tuning after pruning.

Protected tokens (SQuAD's ``qa.protect_question``: [CLS], the question and the separators,
``protect_mask``) are kept by the encoder whatever the gates say. They are no rank-bin
candidates (:func:`~top.pruning.top.gates.rank_bins`: the ``a`` candidates of a layer are its
alive unprotected tokens but [CLS]), the ranking loss ranks only the unprotected tokens, and the
constraint follows ``m_l = p + sum_b q_b occ_b(m_{l-1} - p)`` with ``p`` the example's protected
count ([CLS] included; :meth:`ToP.prepare` receives those counts beside the lengths, a training
batch carries its ``protect_mask``), so the deterministic model's FLOPs are again exactly those
the constraint and the calibration see. The export records ``protected_tokens``; its selectors
refuse inputs whose protection differs from training's.

Ablations (:class:`~top.pruning.top.settings.ToPSettings`): ``rank_distill_weight: 0`` turns
ranking distillation off entirely (no loss, no scoring-only layers, no teacher final-layer
scores); ``layer_gates: false`` drops the layer gates, so every layer of ``prune_layers`` prunes
with its bin gates alone (``q_b = P(z_b > 0)`` in the constraint and the evaluation gates);
``bin_order: ranked`` ties the bins to rank order: the gates only count how many bins survive,
and the survivors are always the best-ranked (sorted samples in training, the first bins at
evaluation, ``P(K > b)`` in the constraint with ``K`` the open gates), where the reference's
gates may keep any bins.

The reference clamps every ``log_alpha`` into ``[log 1e-2, log 1e2]`` after each optimiser step.
The training loop has no after-step hook, so each training selector clamps its own gates in
place at the start of the forward, before they enter the graph, which is equivalent; values
are also read through the same clamp, so evaluation and export after the last step agree.

Modules: :mod:`~top.pruning.top.settings` (the settings and their defaults),
:mod:`~top.pruning.top.gates` (rank bins, their exact occupancy, the hard-concrete gates of
layers and bins), :mod:`~top.pruning.top.selectors` (the gate-backed training selector and the
deterministic one rebuilt from an export) and :mod:`~top.pruning.top.method` (losses, the FLOPs
constraint, calibration, export: the :class:`ToP` method).
"""

from top.pruning.top.method import ToP

__all__ = ["ToP"]
