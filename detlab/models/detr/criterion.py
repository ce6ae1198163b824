"""DETR's Hungarian matcher and set criterion (the loss side of DETR).

The matcher pairs each ground-truth box with one query by a minimum-cost
assignment (scipy ``linear_sum_assignment``); the criterion then computes the
classification loss over every query (unmatched queries must predict the
no-object class) and the box losses over matched pairs only.

Legend for shape comments: ``B`` images, ``Q`` queries, ``C`` classes (the
logits have ``C + 1`` columns, the last being no-object), ``N`` boxes of one
image, ``M`` boxes of the whole batch.

Box frame here: ``cxcywh`` normalised to the (unpadded) image, in ``[0, 1]``.
This is the only frame DETR works in; ``model.py`` converts at its edges.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

MatchIndices = list[tuple[Tensor, Tensor]]


def _xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth boxes.

    The cost of pairing query ``q`` with box ``n`` is
    ``cost_class * -p_q(label_n) + cost_bbox * L1(box_q, box_n) + cost_giou * -GIoU(box_q, box_n)``.

    Args:
        cost_class: weight of the (negative) class probability.
        cost_bbox: weight of the L1 distance between cxcywh boxes.
        cost_giou: weight of the negative generalised IoU.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: all costs are 0; set at least one of cost_class, cost_bbox, cost_giou"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> MatchIndices:
        """Match the queries of every image to that image's boxes.

        Args:
            outputs: ``pred_logits`` ``[B, Q, C+1]`` and ``pred_boxes`` ``[B, Q, 4]``
                cxcywh normalised.
            targets: per image, ``labels`` int64 ``[N]`` in ``0..C-1`` and ``boxes``
                ``[N, 4]`` cxcywh normalised.

        Returns:
            Per image, ``(query_idx, target_idx)`` int64 tensors of length ``min(Q, N)``:
            query ``query_idx[k]`` is matched to box ``target_idx[k]``; ``target_idx``
            is sorted by query index.
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        # All images at once: costs between every query of the batch and every box of
        # the batch; each image then solves only its own block.
        prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)  # [B*Q, C+1]
        out_bbox = outputs["pred_boxes"].flatten(0, 1).float()  # [B*Q, 4]
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()  # [M]
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()  # [M, 4]

        cost_class = -prob[:, tgt_ids]  # [B*Q, M]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)  # [B*Q, M]
        cost_giou = -generalized_box_iou(_xyxy(out_bbox), _xyxy(tgt_bbox))  # [B*Q, M]
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        cost = cost.view(bs, num_queries, -1).cpu()  # [B, Q, M]

        sizes = [len(t["boxes"]) for t in targets]
        indices = []
        for i, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices


def _batch_query_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    """``(image_idx, query_idx)`` of every matched query, for advanced indexing."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


def _num_boxes(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """Average number of boxes per rank (at least 1), so every rank normalises alike."""
    num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world = dist.get_world_size()
    return max(num.item() / world, 1.0)


class SetCriterion(nn.Module):
    """DETR's loss: Hungarian matching, then CE over all queries and L1 + GIoU over matched pairs.

    Loss values come back already multiplied by their weights, so the training
    loss is the plain sum of every ``loss_*`` entry. Auxiliary decoder layers add
    ``loss_ce_{i}``, ``loss_bbox_{i}``, ``loss_giou_{i}``.

    Args:
        num_classes: ``C``, not counting no-object.
        matcher: the assignment used for the final and every auxiliary layer.
        eos_coef: CE weight of the no-object class (the rest weigh 1).
        weight_ce, weight_bbox, weight_giou: loss weights.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_ce = weight_ce
        self.weight_bbox = weight_bbox
        self.weight_giou = weight_giou
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Not persistent: the model's state dict must stay exactly the published one.
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: MatchIndices
    ) -> dict[str, Tensor]:
        """Weighted CE over all ``B*Q`` queries; also the logged ``class_error`` (percent)."""
        logits = outputs["pred_logits"].float()  # [B, Q, C+1]
        idx = _batch_query_index(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[idx] = matched_labels  # [B, Q]
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        with torch.no_grad():
            if matched_labels.numel() == 0:
                # Nothing to classify: no error, rather than the 100 % an empty mean would give.
                class_error = logits.new_zeros(())
            else:
                correct = (logits[idx].argmax(-1) == matched_labels).float().mean()
                class_error = 100.0 * (1.0 - correct)
        return {"loss_ce": self.weight_ce * loss_ce, "class_error": class_error}

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict[str, Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Mean absolute error between predicted (non-no-object) and true box counts; logged only."""
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor(
            [len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float32
        )
        card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()  # [B]
        return {"cardinality_error": F.l1_loss(card_pred, tgt_lengths)}

    def loss_boxes(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        """L1 and ``1 - GIoU`` over matched pairs, summed and divided by ``num_boxes``."""
        idx = _batch_query_index(indices)
        src_boxes = outputs["pred_boxes"][idx].float()  # [M, 4]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src_boxes)  # [M, 4]
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(_xyxy(src_boxes), _xyxy(tgt_boxes)))  # [M]
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": self.weight_bbox * loss_bbox, "loss_giou": self.weight_giou * loss_giou}

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All losses of the final layer and of every auxiliary layer.

        Args:
            outputs: ``pred_logits`` ``[B, Q, C+1]``, ``pred_boxes`` ``[B, Q, 4]``
                cxcywh normalised, and optionally ``aux_outputs``: a list of dicts of
                the same two keys, one per earlier decoder layer, and ``enc_outputs``
                (per-token predictions of query selection; losses ``*_enc``).
            targets: per image, ``labels`` int64 ``[N]`` and ``boxes`` ``[N, 4]``
                cxcywh normalised; ``N`` may be 0.

        Returns:
            ``loss_ce``, ``loss_bbox``, ``loss_giou`` (weighted), their ``_{i}``
            auxiliary copies, and the logged values ``class_error`` and
            ``cardinality_error`` (no gradient, not part of the loss).
        """
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        indices = self.matcher(outputs, targets)
        losses = self.loss_labels(outputs, targets, indices)
        losses.update(self.loss_cardinality(outputs, targets))
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        extra = list(enumerate(outputs.get("aux_outputs", [])))
        if "enc_outputs" in outputs:
            extra.append(("enc", outputs["enc_outputs"]))
        for suffix, aux in extra:
            aux_indices = self.matcher(aux, targets)
            aux_losses = {"loss_ce": self.loss_labels(aux, targets, aux_indices)["loss_ce"]}
            aux_losses.update(self.loss_boxes(aux, targets, aux_indices, num_boxes))
            losses.update({f"{k}_{suffix}": v for k, v in aux_losses.items()})
        return losses
