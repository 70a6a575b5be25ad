"""VGG16 trunk to conv4_3, conv5_3, conv_fc7 and conv6_2 (paper §4, Table 1; SPEC §2).

Strides 8 / 16 / 32 / 64, grids 38 / 19 / 10 / 5 at input 300. pool5 is 2x2/2 and conv_fc6 has
dilation 1 by default, which gives exactly Table 1's receptive fields (108 / 228 / 340 / 468 with the
3x3 prediction conv).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# VGG16 configuration "D": channels per conv, "M" a 2x2/2 max-pool (ceil_mode from SPEC §2).
VGG16_TO_CONV4_3 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M_ceil", 512, 512, 512]
VGG16_CONV5 = [512, 512, 512]
FC_CHANNELS = 1024
CONV6_CHANNELS = (256, 512)
STRIDES = (8, 16, 32, 64)


def scaled_channels(channels: int, width: float) -> int:
    """Channel count times ``width``, rounded to a multiple of 8, at least 8 (SPEC §2)."""
    return max(8, int(round(channels * width / 8)) * 8)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet, as in SSD)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, H, W); normalise each cell's descriptor, then rescale per channel
        return nn.functional.normalize(x, dim=1, eps=1e-10) * self.weight.view(1, -1, 1, 1)


def conv_block(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
    dilation: int = 1, batch_norm: bool = False,
) -> list[nn.Module]:
    """Conv (+ BatchNorm) + ReLU, as a list to splice into an nn.Sequential."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=not batch_norm)
    layers: list[nn.Module] = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class VGGBackbone(nn.Module):
    """VGG16 detection trunk returning [X(1), X(2), X(3), X(4)].

    Args:
        width: channel multiplier (1.0 is the paper's network).
        batch_norm: BatchNorm after every conv.
        fc6_dilation: 1 (default, Table 1) or 3 (SSD's converted fc6).
    """

    strides = STRIDES

    def __init__(self, width: float = 1.0, batch_norm: bool = False, fc6_dilation: int = 1) -> None:
        super().__init__()
        self.width = width
        self.batch_norm = batch_norm
        self.fc6_dilation = fc6_dilation

        def ch(c: int) -> int:
            return scaled_channels(c, width)

        layers: list[nn.Module] = []
        in_channels = 3
        for spec in VGG16_TO_CONV4_3:
            if spec == "M":  # pool1, pool2: floor
                layers.append(nn.MaxPool2d(2, 2))
            elif spec == "M_ceil":  # pool3: ceil, 75 -> 38 at 300
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += conv_block(in_channels, ch(spec), batch_norm=batch_norm)
                in_channels = ch(spec)
        self.to_conv4_3 = nn.Sequential(*layers)
        self.l2norm_conv4_3 = L2Norm(in_channels, 10.0)  # SPEC §2: init 10
        c_conv4_3 = in_channels

        layers = [nn.MaxPool2d(2, 2, ceil_mode=True)]  # pool4: 38 -> 19
        for spec in VGG16_CONV5:
            layers += conv_block(in_channels, ch(spec), batch_norm=batch_norm)
            in_channels = ch(spec)
        self.to_conv5_3 = nn.Sequential(*layers)
        self.l2norm_conv5_3 = L2Norm(in_channels, 8.0)  # SPEC §2: init 8
        c_conv5_3 = in_channels

        # pool5 2x2/2 (not SSD's 3x3/1): Table 1 puts conv_fc7 at stride 32
        self.to_conv_fc7 = nn.Sequential(
            nn.MaxPool2d(2, 2, ceil_mode=True),
            *conv_block(in_channels, ch(FC_CHANNELS), 3, padding=fc6_dilation, dilation=fc6_dilation,
                        batch_norm=batch_norm),  # conv_fc6
            *conv_block(ch(FC_CHANNELS), ch(FC_CHANNELS), 1, padding=0, batch_norm=batch_norm),  # conv_fc7
        )
        self.to_conv6_2 = nn.Sequential(
            *conv_block(ch(FC_CHANNELS), ch(CONV6_CHANNELS[0]), 1, padding=0, batch_norm=batch_norm),  # conv6_1
            *conv_block(ch(CONV6_CHANNELS[0]), ch(CONV6_CHANNELS[1]), 3, stride=2, padding=1,
                        batch_norm=batch_norm),  # conv6_2
        )
        self.out_channels = [c_conv4_3, c_conv5_3, ch(FC_CHANNELS), ch(CONV6_CHANNELS[1])]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, S, S), normalised -> [X(1) .. X(4)], X(n) of shape (B, c_n, h_n, w_n)."""
        conv4_3 = self.to_conv4_3(images)  # (B, c_1, 38, 38) at 300
        conv5_3 = self.to_conv5_3(conv4_3)  # (B, c_2, 19, 19)
        conv_fc7 = self.to_conv_fc7(conv5_3)  # (B, c_3, 10, 10)
        conv6_2 = self.to_conv6_2(conv_fc7)  # (B, c_4, 5, 5)
        return [self.l2norm_conv4_3(conv4_3), self.l2norm_conv5_3(conv5_3), conv_fc7, conv6_2]

    def vgg_layers(self) -> list[nn.Module]:
        """conv1_1 .. conv5_3 (and their BatchNorms) in order: what ImageNet VGG16 weights cover."""
        return [m for m in [*self.to_conv4_3, *self.to_conv5_3] if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]

    def load_vgg16(self, path: str | Path) -> list[str]:
        """Load ImageNet VGG16 weights from a local state-dict file (width 1 only); returns the layers loaded.

        Two layouts (anything else is refused with an error naming the file):
        - torchvision ``vgg16`` / ``vgg16_bn``: ``features.*`` maps onto conv1_1 .. conv5_3 (and their
          BatchNorms). fc6/fc7 start fresh (SPEC §2: converting them needs dilation 3).
        - ssd.pytorch's ``vgg16_reducedfc.pth`` (the base network of SSD and the detectors built on it):
          ``vgg()``'s nn.ModuleList, conv/ReLU pairs with pools between, so conv1_1 .. conv5_3 sit at
          0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 (torchvision's indices), then pool5 (30),
          fc6 (31: 3x3, dilation 6, 1024) and fc7 (33: 1x1, 1024). Its fc6 follows a 3x3/1 pool5 (stride 16),
          so its taps are 6 x 16 = 96 px apart: what dilation 3 after this backbone's 2x2/2 pool5
          (stride 32) samples. fc6 and fc7 are loaded only with ``fc6_dilation=3``; at dilation 1 the
          shapes fit but the taps would be 32 px apart, so they start fresh (and fc7 with fc6).

        A ``vgg16_bn`` conv has a bias that this backbone's BatchNorm convs lack; BatchNorm's running
        mean was measured with it, so it is folded in: BN(W x + b) with mean m is BN(W x) with mean m - b.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any load failure is reported with the path
            raise ValueError(f"{path}: cannot read VGG16 weights ({error})") from error
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a VGG16 state dict, got {type(state).__name__}")
        layout, by_index = _vgg16_layout(state, path)
        if layout == "reducedfc":
            expected = set(REDUCEDFC_CONVS) | {REDUCEDFC_FC6, REDUCEDFC_FC7}
            if set(by_index) != expected or any(set(params) != {"weight", "bias"} for params in by_index.values()):
                raise ValueError(
                    f"{path}: not a vgg16_reducedfc layout: expected weight and bias at indices "
                    f"{sorted(expected)}, found indices {sorted(by_index)}")
            source = [by_index[i] for i in REDUCEDFC_CONVS]
        else:
            source = [by_index[i] for i in sorted(by_index)]
        has_bn_source = any("running_mean" in params for params in source)
        if has_bn_source != self.batch_norm:
            name = {"reducedfc": "vgg16_reducedfc", "torchvision": "vgg16_bn" if has_bn_source else "vgg16"}[layout]
            raise ValueError(f"{path}: file is {name} but the backbone has batch_norm={self.batch_norm}")
        targets = self.vgg_layers()
        if len(source) != len(targets):
            raise ValueError(f"{path}: {len(source)} feature layers, expected {len(targets)} (VGG16 conv1_1..conv5_3)")
        folded_bias: Tensor | None = None  # a vgg16_bn conv's bias, waiting for its BatchNorm
        for params, module in zip(source, targets):
            params = dict(params)
            if isinstance(module, nn.Conv2d) and module.bias is None:
                folded_bias = params.pop("bias", None)
            elif isinstance(module, nn.BatchNorm2d) and folded_bias is not None:
                params["running_mean"] = params["running_mean"] - folded_bias  # BN(Wx + b; m) = BN(Wx; m - b)
                folded_bias = None
            self._load_layer(module, params, path)
        loaded = [f"conv{block}_{i}" for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
        if layout == "reducedfc" and self.fc6_dilation == 3:
            fc6, fc7 = [m for m in self.to_conv_fc7 if isinstance(m, nn.Conv2d)]
            self._load_layer(fc6, by_index[REDUCEDFC_FC6], path)
            self._load_layer(fc7, by_index[REDUCEDFC_FC7], path)
            loaded += ["fc6", "fc7"]
        return loaded

    def _load_layer(self, module: nn.Module, params: dict[str, Tensor], path: Path) -> None:
        own = module.state_dict()
        for name, tensor in own.items():
            if name not in params:
                if name == "num_batches_tracked":
                    continue
                raise ValueError(f"{path}: missing '{name}' for {module}")
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(params[name].shape)}, the backbone needs "
                    f"{tuple(tensor.shape)} (ImageNet weights need width 1.0, this backbone has width {self.width})"
                )
        module.load_state_dict({k: v for k, v in params.items() if k in own}, strict=False)


# ssd.pytorch's vgg(base['300'], 3): conv1_1 .. conv5_3, then pool5 (30), conv6 = fc6 (31), conv7 = fc7 (33)
REDUCEDFC_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
REDUCEDFC_FC6, REDUCEDFC_FC7 = 31, 33


def _vgg16_layout(state: dict, path: Path) -> tuple[str, dict[int, dict[str, Tensor]]]:
    """("torchvision" | "reducedfc", {module index: {param name: tensor}}) of a VGG16 state dict.

    torchvision keys are ``features.<i>.<param>`` (``classifier.*`` ignored); ssd.pytorch's base network
    ``<i>.<param>``, or ``vgg.<i>.<param>`` inside a whole SSD's state dict (its extras and heads ignored).
    """
    for layout, prefix in (("torchvision", "features."), ("reducedfc", ""), ("reducedfc", "vgg.")):
        by_index: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            if not isinstance(key, str) or not key.startswith(prefix):
                continue
            parts = key[len(prefix):].split(".")
            if len(parts) == 2 and parts[0].isdigit() and isinstance(value, Tensor):
                by_index.setdefault(int(parts[0]), {})[parts[1]] = value
        if by_index:
            return layout, by_index
    keys = ", ".join(sorted(str(k) for k in state)[:6])
    raise ValueError(f"{path}: not a VGG16 state dict this backbone reads (torchvision vgg16/vgg16_bn 'features.*', "
                     f"or ssd.pytorch vgg16_reducedfc '0.weight' .. '33.weight'); its keys begin {keys}")


def receptive_fields(backbone: VGGBackbone, head_kernel: int = 3) -> list[int]:
    """Theoretical receptive field of each detection layer, plus the head's k x k conv (Table 1).

    Walks the modules: r += (k - 1) * dilation * jump, jump *= stride.
    """
    fields, r, jump = [], 1, 1
    for stage in (backbone.to_conv4_3, backbone.to_conv5_3, backbone.to_conv_fc7, backbone.to_conv6_2):
        for module in stage:
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
                s = module.stride if isinstance(module.stride, int) else module.stride[0]
                d = module.dilation if isinstance(module.dilation, int) else module.dilation[0]
                r += (k - 1) * d * jump
                jump *= s
        fields.append(r + (head_kernel - 1) * jump)
    return fields
