"""Attention-LSTM sequence classifier: the vol and trend regime detectors (one model per kind).

Architecture, for a batch of windows ``x`` of shape ``(B, T, F)`` (T days, oldest first,
F standardized features)::

    h   = LSTM_1(x)                       (B, T, hidden)     hidden = 64, every step kept
    h   = Dropout(h)
    s_t = (h_t . q) / sqrt(hidden)        (B, T)             q: a learnable (hidden,) query
    w   = softmax_t(s)                    (B, T)             attention over the T days
    z_t = T * w_t * h_t                   (B, T, hidden)     the re-weighted sequence
    g   = LSTM_2(z)[:, -1]                (B, hidden2)       hidden2 = 32, last hidden state
    logits = Linear(hidden2 -> n_classes)(Dropout(ReLU(Linear(hidden2 -> hidden2)(g))))

How the attention feeds LSTM_2 (the decision the spec leaves open): LSTM_2 reads the first
LSTM's sequence with each step scaled by its attention weight. The factor T makes uniform
attention (w_t = 1/T, the state at initialisation since q starts small) the identity, so
training starts as a plain stacked LSTM and the attention learns which days to amplify or mute.
The usual attention context ``c = sum_t w_t h_t`` is exactly the time-mean of ``z``
(``c = mean_t z_t``); it is returned with the weights for inspection, but the head sees it
only through LSTM_2, whose last hidden state keeps the order information a pooled vector loses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: Defaults of every hyper-parameter except the data-dependent n_features and n_classes.
DEFAULT_HPARAMS: dict[str, Any] = {"hidden": 64, "hidden2": 32, "dropout": 0.2, "window": 30}
REQUIRED_HPARAMS = ("n_features", "n_classes")


class AttentionLSTMClassifier(nn.Module):
    """LSTM(hidden) -> scaled dot-product attention (learnable query) -> LSTM(hidden2) -> dense head.

    :param hparams: ``n_features`` (F), ``n_classes`` (K), and optionally ``hidden`` (64),
        ``hidden2`` (32), ``dropout`` (0.2, after LSTM_1 and inside the head) and ``window``
        (30, the T every input must have). The complete dict is kept as :attr:`hparams`, so
        ``AttentionLSTMClassifier(saved_hparams)`` rebuilds the same shapes for a saved
        ``state_dict``.
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        unknown = set(hparams) - set(DEFAULT_HPARAMS) - set(REQUIRED_HPARAMS)
        if unknown:
            raise ValueError(f"AttentionLSTMClassifier: unknown hparams {sorted(unknown)}")
        missing = [k for k in REQUIRED_HPARAMS if k not in hparams]
        if missing:
            raise ValueError(f"AttentionLSTMClassifier: hparams lack {missing}")
        hp = {**DEFAULT_HPARAMS, **dict(hparams)}
        for key in ("n_features", "n_classes", "hidden", "hidden2", "window"):
            hp[key] = int(hp[key])
            if hp[key] < 1:
                raise ValueError(f"AttentionLSTMClassifier: {key} must be >= 1, got {hp[key]}")
        hp["dropout"] = float(hp["dropout"])
        if not 0.0 <= hp["dropout"] < 1.0:
            raise ValueError(f"AttentionLSTMClassifier: dropout must be in [0, 1), got {hp['dropout']}")
        self._hparams = hp

        self.lstm1 = nn.LSTM(hp["n_features"], hp["hidden"], batch_first=True)
        self.drop1 = nn.Dropout(hp["dropout"])
        # Small init: scores start near 0, attention near uniform (see the module docstring).
        self.query = nn.Parameter(torch.randn(hp["hidden"]) * 0.01)
        self.lstm2 = nn.LSTM(hp["hidden"], hp["hidden2"], batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hp["hidden2"], hp["hidden2"]),
            nn.ReLU(),
            nn.Dropout(hp["dropout"]),
            nn.Linear(hp["hidden2"], hp["n_classes"]),
        )

    @property
    def hparams(self) -> dict[str, Any]:
        """The complete hyper-parameters (plain ints/floats), a copy."""
        return dict(self._hparams)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Attention weights over time of LSTM_1's states.

        :param h: ``(B, T, hidden)`` LSTM_1 outputs
        :return: ``(B, T)`` non-negative weights, each row summing to 1
        """
        scores = torch.matmul(h, self.query) / math.sqrt(self._hparams["hidden"])
        return torch.softmax(scores, dim=1)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class logits of each window.

        :param x: ``(B, T, F)`` float32 windows, T = ``hparams["window"]``, oldest day first
        :param return_attention: also return the attention weights
        :return: logits ``(B, K)`` (softmax gives class probabilities); with
            `return_attention`, ``(logits, weights)`` with weights ``(B, T)`` summing to 1 per row
        """
        hp = self._hparams
        if x.dim() != 3 or x.shape[1] != hp["window"] or x.shape[2] != hp["n_features"]:
            raise ValueError(
                f"AttentionLSTMClassifier expects (batch, {hp['window']}, {hp['n_features']}) windows, "
                f"got {tuple(x.shape)}"
            )
        h, _ = self.lstm1(x)
        h = self.drop1(h)
        weights = self.attention(h)
        z = h * (weights.unsqueeze(-1) * x.shape[1])
        out, _ = self.lstm2(z)
        logits = self.head(out[:, -1])
        return (logits, weights) if return_attention else logits
