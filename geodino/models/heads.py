"""The DINO projection head (also used for iBOT), as in DINOv2."""

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from geodino.errors import ConfigError


class DINOHead(nn.Module):
    """MLP, L2-normalised bottleneck and weight-normalised prototypes (DINOv2's ``DINOHead``).

    The layers, their order and initialisation are the official ones, so official head weights
    (``mlp.*``, ``last_layer.weight_g``/``weight_v``) load unchanged. The prototypes' norm is
    fixed to 1 (the weight-norm gain is not trained, as DINO's ``norm_last_layer``), so the
    logits are cosines in [-1, 1]: the range the losses' temperatures assume.

    Args:
        in_dim: width of the backbone features.
        out_dim: number of prototypes.
        use_bn: batch norm between hidden layers.
        nlayers: MLP layers (>= 1).
        hidden_dim: hidden width.
        bottleneck_dim: width of the normalised bottleneck.
        mlp_bias: biases in the MLP.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
    ) -> None:
        """Build and initialise the layers.

        Raises:
            ConfigError: if a width or the layer count is not positive.
        """
        super().__init__()
        if nlayers < 1 or min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ConfigError(
                f"DINOHead needs nlayers >= 1 and positive widths, got nlayers={nlayers}, "
                f"in_dim={in_dim}, out_dim={out_dim}, hidden_dim={hidden_dim}, "
                f"bottleneck_dim={bottleneck_dim}; fix the head settings."
            )
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim, bias=mlp_bias)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=mlp_bias)]
            for _ in range(nlayers - 2):
                layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim, bias=mlp_bias)]
            layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim, bias=mlp_bias)]
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Prototype logits (cosines, in [-1, 1] while the prototype norms stay 1).

        Args:
            x: (..., in_dim) features.

        Returns:
            (..., out_dim) logits.
        """
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        out: Tensor = self.last_layer(x)
        return out
