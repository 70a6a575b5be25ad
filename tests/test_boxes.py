"""Box utilities beyond torchvision.ops (borrowcore.models.boxes)."""

import torch


def test_drop_inside_drops_boxes_held_by_a_kept_better_box_of_their_class():
    """Worked by hand, share 0.8: the face [0, 100] (0.9) holds the eye [20, 40] (0.5, all inside) and the
    speck [22, 30] (0.4); the neighbour [80, 180] (0.8) has 20% of its area inside: kept; the other class's
    box (0.95) holds the eye but is not its class. Greedy like NMS: B (y 10-120, 0.7) is 82% inside the face
    and dropped, so C (y 100-120, 0.6), wholly inside B but not inside the face, stays."""
    from borrowcore.models.boxes import drop_inside

    boxes = torch.tensor([[20, 20, 40, 40], [0, 0, 100, 100], [80, 0, 180, 100], [22, 22, 30, 30],
                          [10, 10, 50, 50], [0, 10, 100, 120], [0, 100, 100, 120]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.4, 0.95, 0.7, 0.6])
    labels = torch.tensor([1, 1, 1, 1, 2, 1, 1])
    assert drop_inside(boxes, scores, labels, 0.8).tolist() == [4, 1, 2, 6]
    assert drop_inside(boxes, scores, labels, 1.0).tolist() == [4, 1, 2, 5]  # B is not wholly inside; C is in B
    assert drop_inside(boxes[:0], scores[:0], labels[:0], 0.8).tolist() == []
