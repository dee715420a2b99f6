"""Tissue segmentation (CSF/GM/WM) of brain images on the MNI grid: template priors + per-image mixture model.

Model: inside a (generously dilated) brain mask, each voxel intensity ``x`` comes from one of four Gaussian classes
(background, CSF, GM, WM) with image-specific means and variances; the class probabilities at each voxel are the
template tissue priors (ICBM152 GM/WM maps, CSF = brain − GM − WM, background = 1 − brain), mixed with a small
uniform floor so that a brain larger or shifted relative to the template is still segmented. A scikit-learn
``GaussianMixture`` is first fitted to the masked intensities, initialised from prior-weighted class means (so no
intensity order is assumed and any scale works: real scanner units, [0, 1] synthetic images, phantoms); then a few
EM iterations with the spatial priors give posteriors ``p(k | x, voxel) ∝ prior_k(voxel)^w · N(x; μ_k, σ_k)``.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from analysis.tissue_maps import TISSUES, TissueMaps, on_grid
from flowlet.data.nifti import Volume

if TYPE_CHECKING:
    from flowlet.data.grid import Grid

logger = logging.getLogger(__name__)

__all__ = ["WITHDRAWN_METHODS", "TissueSegmenter"]

#: Methods that were offered once, with the reason they are refused now.
WITHDRAWN_METHODS: dict[str, str] = {
    "atropos": (
        "ANTs Atropos as called here took the zeros around a skull-stripped brain for its darkest class and counted "
        "CSF as GM (total GM 1336 mL on average on ixi-dev against the reference's 702; docs/prep.md); use 'gmm'"
    ),
}
_EPS = 1e-6
_GMM_SAMPLE = 5000
#: Anatomically adjacent class pairs (indices into background, CSF, GM, WM) that share partial-volume voxels.
_MIXED: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3))


class TissueSegmenter(BaseEstimator):
    """Prior-guided Gaussian-mixture tissue segmentation (scikit-learn estimator style).

    Args:
        grid: grid of the priors (a :class:`flowlet.data.grid.Grid`); default the 2 mm MNI grid.
        priors: optional ``{"csf", "gm", "wm"}`` → ``(X, Y, Z)`` arrays on ``grid`` (default: template priors).
        prior_weight: exponent ``w`` of the spatial prior (0 = intensity only).
        n_iter: EM iterations with spatial priors after the mixture fit.
        mask_threshold: voxels where the prior brain probability exceeds this, dilated by ``margin_mm``, are
            segmented.
        bias_sigma_mm: width of the Gaussian that smooths the multiplicative bias field estimated inside the EM
            (0 disables bias correction).
        partial_volume: model voxels that mix two adjacent classes (background/CSF, CSF/GM, GM/WM) as classes
            of their own, with a uniform mixing fraction; the returned maps are then expected tissue *fractions*
            (volumes stay unbiased at coarse resolution, where most cortical voxels are mixed).
        pve: also compute the linear partial-volume fractions (:attr:`TissueMaps.pve`, what
            :meth:`TissueMaps.as_pve` and ``volumes="pve"`` read); needs ``partial_volume`` and ``method="gmm"``.
        margin_mm: dilation of the prior brain mask (head-size and registration differences).
        prior_floor: weight of the uniform distribution mixed into the priors (0 = trust the template fully).
        method: ``"gmm"``, the only method (``"atropos"`` was withdrawn: see :data:`WITHDRAWN_METHODS`).

    Example:
        >>> seg = TissueSegmenter().fit()  # doctest: +SKIP
        >>> maps = seg.transform(load_volume("sub-0001_T1w.nii.gz"))  # doctest: +SKIP
        >>> maps.volumes_mm3()["gm"]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        grid: Grid | None = None,
        priors: dict[str, np.ndarray] | None = None,
        prior_weight: float = 1.0,
        n_iter: int = 8,
        mask_threshold: float = 0.05,
        margin_mm: float = 8.0,
        prior_floor: float = 0.05,
        bias_sigma_mm: float = 30.0,
        partial_volume: bool = True,
        pve: bool = False,
        method: str = "gmm",
        random_state: int = 0,
    ) -> None:
        if method in WITHDRAWN_METHODS:
            raise ValueError(f"segmentation method '{method}' was withdrawn: {WITHDRAWN_METHODS[method]}")
        if method != "gmm":
            raise ValueError(f"unknown segmentation method '{method}'; choose from ['gmm']")
        self.grid = grid
        self.priors = priors
        self.prior_weight = prior_weight
        self.n_iter = n_iter
        self.mask_threshold = mask_threshold
        self.margin_mm = margin_mm
        self.prior_floor = prior_floor
        self.bias_sigma_mm = bias_sigma_mm
        self.partial_volume = partial_volume
        self.pve = pve
        self.method = method
        self.random_state = random_state

    def fit(self, X=None, y=None) -> TissueSegmenter:
        """Load the priors on the grid. ``X``/``y`` are ignored (the model is fitted per image in transform)."""
        if self.grid is None:
            from flowlet.data.grid import mni_grid

            self.grid_ = mni_grid(2.0)
        else:
            self.grid_ = self.grid
        if self.priors is None:
            from flowlet.data.templates import load_tissue_priors

            priors = load_tissue_priors(self.grid_)
        else:
            priors = self.priors
        missing = [t for t in TISSUES if t not in priors]
        if missing:
            raise ValueError(f"priors: missing tissue(s) {missing}; expected keys {list(TISSUES)}")
        stack = np.stack([np.clip(np.asarray(priors[t], np.float64), 0.0, 1.0) for t in TISSUES])
        if stack.shape[1:] != tuple(self.grid_.shape):
            raise ValueError(f"priors have shape {stack.shape[1:]}, grid has {tuple(self.grid_.shape)}")
        brain = stack.sum(0)
        self.tissue_priors_ = stack.astype(np.float32)
        # Background is a class of its own: skull-stripped background (0) must not be counted as CSF.
        self.priors_ = self._with_background(stack)
        step = float(min(np.linalg.norm(np.asarray(self.grid_.affine)[:3, :3], axis=0)))
        iterations = max(int(np.ceil(self.margin_mm / step)), 1)
        self.mask_ = ndimage.binary_dilation(brain > self.mask_threshold, iterations=iterations)
        return self

    def transform(
        self,
        volume: Volume,
        *,
        priors: np.ndarray | None = None,
        start: TissueMaps | None = None,
        log_bias: np.ndarray | None = None,
        n_iter: int | None = None,
    ) -> TissueMaps:
        """Segment one image (resampled onto the prior grid first if needed, with a log message).

        Args:
            volume: T1-weighted image (any intensity scale).
            priors: optional ``(3, X, Y, Z)`` CSF/GM/WM priors on the grid replacing the template ones (e.g. the
                template priors carried onto this subject by registration).
            start: maps of an earlier pass (e.g. on a coarser grid) whose class means and variances start the EM
                (the mixture pre-fit is then skipped).
            log_bias: fixed ``(X, Y, Z)`` log bias field (from an earlier pass); it is then not re-estimated.
            n_iter: EM iterations for this call (default ``self.n_iter``).

        Returns:
            :class:`TissueMaps` on the prior grid (with the class ``variances`` and the ``log_bias`` field used).
        """
        if not hasattr(self, "priors_"):
            raise RuntimeError("TissueSegmenter is not fitted; call fit() first")
        volume = on_grid(volume, self.grid_)
        x = np.asarray(volume.data, np.float64)
        stack = self.priors_ if priors is None else self._with_background(np.asarray(priors, np.float32))
        mask = self.mask_ & np.isfinite(x)
        fixed_bias = None if log_bias is None else np.asarray(log_bias, np.float64)[mask]
        params = None if start is None else (start.class_means(), start.class_variances())
        post, pve, means, variances, bias = self._gmm(
            x[mask],
            stack[:, mask],
            mask=mask,
            start=params,
            log_bias=fixed_bias,
            n_iter=n_iter or self.n_iter,
        )
        return TissueMaps(
            probabilities=_tissue_maps(post, mask),
            mask=mask,
            affine=np.asarray(self.grid_.affine, np.float64),
            intensity=x.astype(np.float32),
            means=means,
            variances=variances,
            log_bias=_unmask(bias, mask),
            pve=None if pve is None else _tissue_maps(pve, mask),
        )

    def _with_background(self, tissue: np.ndarray) -> np.ndarray:
        if tissue.shape != (len(TISSUES), *self.grid_.shape):
            raise ValueError(
                f"priors must have shape {(len(TISSUES), *self.grid_.shape)}, got {tissue.shape}"
            )
        tissue = np.clip(tissue, 0.0, 1.0)
        stack = np.concatenate([np.clip(1.0 - tissue.sum(0), 0.0, 1.0)[None], tissue])
        return (1.0 - self.prior_floor) * stack + self.prior_floor / stack.shape[0]

    def _gmm(
        self,
        values: np.ndarray,
        prior: np.ndarray,
        *,
        mask: np.ndarray,
        start: tuple[np.ndarray, np.ndarray] | None,
        log_bias: np.ndarray | None,
        n_iter: int,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float], dict[str, float], np.ndarray]:
        """Fractions ``(4, V)`` (background, CSF, GM, WM), linear partial-volume fractions ``(4, V)`` (None without
        mixed classes or ``pve``), class means, variances and the log bias ``(V,)``."""
        prior = np.asarray(prior, np.float32) + np.float32(_EPS)
        prior = prior / prior.sum(0, keepdims=True)
        if start is not None:
            mu, var = start
        else:
            mu, var = self._mixture_prefit(values, prior, *_weighted_moments(values, prior))
        estimate_bias = log_bias is None and self.bias_sigma_mm > 0
        log_bias = np.zeros_like(values) if log_bias is None else log_bias
        for it in range(max(n_iter, 1)):
            y = values * np.exp(-log_bias)
            post = self._posteriors(y, prior, mu, var)
            mu, var = _weighted_moments(y, post[:4])
            if estimate_bias and it < n_iter - 1:
                log_bias = self._bias(values, post[:4], mu, mask)
        if not self.partial_volume:
            return post[:4], None, *_class_parameters(mu, var), log_bias
        fractions = _fractions(y, post, mu)
        pve = _linear_pve(y, post, mu, fractions) if self.pve else None
        return fractions, pve, *_class_parameters(mu, var), log_bias

    def _posteriors(self, y: np.ndarray, prior: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Class posteriors ``(4 + M, V)``: 4 pure classes, then the mixed classes of :data:`_MIXED` if enabled."""
        log_prior, means, variances = [np.log(prior)], [mu], [var]
        if self.partial_volume:
            pairs = np.asarray(_MIXED)
            mixed_prior = np.sqrt(prior[pairs[:, 0]] * prior[pairs[:, 1]])
            log_prior.append(np.log(mixed_prior + _EPS))
            a, b = mu[pairs[:, 0]], mu[pairs[:, 1]]
            # A uniform mixing fraction f in [0, 1]: mean (a+b)/2, variance noise + (b−a)²/12.
            means.append((a + b) / 2)
            variances.append((var[pairs[:, 0]] + var[pairs[:, 1]]) / 2 + (b - a) ** 2 / 12)
        lp = self.prior_weight * np.concatenate(log_prior)
        m, v = np.concatenate(means), np.concatenate(variances)
        log_lik = -0.5 * ((y[None, :] - m[:, None]) ** 2 / v[:, None] + np.log(v)[:, None])
        return _softmax(lp + log_lik)

    def _bias(self, values: np.ndarray, post: np.ndarray, mu: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Smooth log multiplicative bias field at the masked voxels (normalised Gaussian convolution).

        The residual ``log(x / E[μ | x])`` over brain tissue is smoothed with a wide Gaussian; its weighted mean is
        removed so that the overall intensity scale stays with the class means.
        """
        tissue = post[1:]
        weight = tissue.sum(0)
        expected = (tissue * mu[1:, None]).sum(0) / np.maximum(weight, _EPS)
        valid = (values > 0) & (expected > 0) & (weight > 0.5)
        resid = np.where(valid, np.log(np.where(valid, values, 1.0) / np.where(valid, expected, 1.0)), 0.0)
        w = np.where(valid, weight, 0.0)
        step = np.linalg.norm(np.asarray(self.grid_.affine)[:3, :3], axis=0)
        sigma = self.bias_sigma_mm / step
        num, den = np.zeros(mask.shape, np.float32), np.zeros(mask.shape, np.float32)
        num[mask], den[mask] = w * resid, w
        num = ndimage.gaussian_filter(num, sigma, truncate=2.5)[mask]
        den = ndimage.gaussian_filter(den, sigma, truncate=2.5)[mask]
        field = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
        return field - np.average(field, weights=np.maximum(w, _EPS))

    def _mixture_prefit(
        self, values: np.ndarray, prior: np.ndarray, mu: np.ndarray, var: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-image scikit-learn Gaussian mixture on the intensities, started from the prior-weighted moments."""
        # A fixed random subsample keeps the fit fast; the spatial EM afterwards uses every voxel.
        rng = np.random.default_rng(self.random_state)
        sample = (
            values
            if values.size <= _GMM_SAMPLE
            else values[rng.choice(values.size, _GMM_SAMPLE, replace=False)]
        )
        gmm = GaussianMixture(
            n_components=prior.shape[0],
            covariance_type="diag",
            means_init=mu[:, None],
            precisions_init=(1.0 / np.asarray(var, np.float64))[:, None],
            weights_init=_normalised(prior.mean(1, dtype=np.float64)),
            tol=1e-3,
            random_state=self.random_state,
            max_iter=30,
            reg_covar=1e-6 * float(values.var()) + 1e-12,
        )
        with warnings.catch_warnings():
            # Non-convergence within max_iter is harmless: the spatial EM continues from wherever it stopped.
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(sample[:, None])
        return gmm.means_[:, 0], np.maximum(gmm.covariances_[:, 0], 1e-12)


def _class_parameters(mu: np.ndarray, var: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """``(4,)`` class means and variances as ``{"background", "csf", "gm", "wm"}`` dictionaries."""
    names = ("background", *TISSUES)
    return dict(zip(names, mu.tolist())), dict(zip(names, var.tolist()))


def _unmask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    full = np.zeros(mask.shape, np.float32)
    full[mask] = values
    return full


def _fractions(y: np.ndarray, post: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Expected class fractions ``(4, V)``: pure posteriors plus mixed posteriors split by linear unmixing."""
    frac = post[:4].copy()
    for j, (a, b) in enumerate(_MIXED):
        f_b = _mixing_fraction(y, mu, a, b)
        frac[a] += post[4 + j] * (1.0 - f_b)
        frac[b] += post[4 + j] * f_b
    return frac


def _mixing_fraction(y: np.ndarray, mu: np.ndarray, a: int, b: int) -> np.ndarray:
    """Fraction of class ``b`` in a linear mixture of classes ``a`` and ``b`` of intensity ``y``, clipped to [0, 1]
    (0.5 where the two class means coincide)."""
    span = mu[b] - mu[a]
    return np.clip((y - mu[a]) / span, 0.0, 1.0) if abs(span) > 1e-12 else np.full_like(y, 0.5)


def _linear_pve(y: np.ndarray, post: np.ndarray, mu: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Linear partial-volume fractions ``(4, V)`` (Santago & Gage 1993; the idea behind FSL FAST's PVE).

    A voxel whose most probable class is a mixed one of :data:`_MIXED` is a two-class mixture: its fractions are
    the linear mixing proportions of that pair, read from its bias-corrected intensity ``y`` (clipped to [0, 1]),
    and nothing else. Every other voxel is pure and keeps its expected ``fractions``. Each voxel sums to 1.
    """
    pve = fractions.copy()
    best = post.argmax(0)
    for j, (a, b) in enumerate(_MIXED):
        mixed = best == 4 + j
        f_b = _mixing_fraction(y[mixed], mu, a, b)
        pve[:, mixed] = 0.0
        pve[a, mixed] = 1.0 - f_b
        pve[b, mixed] = f_b
    return pve


def _tissue_maps(fractions: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``{"csf", "gm", "wm"}`` → ``(X, Y, Z)`` float32 maps from ``(4, V)`` background/CSF/GM/WM values."""
    maps = {}
    for k, tissue in enumerate(TISSUES):
        full = np.zeros(mask.shape, np.float32)
        full[mask] = fractions[k + 1]
        maps[tissue] = full
    return maps


def _weighted_moments(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = weights.sum(1) + _EPS
    mu = (weights * values[None, :]).sum(1) / total
    var = (weights * (values[None, :] - mu[:, None]) ** 2).sum(1) / total
    floor = 1e-6 * max(float(values.var()), 1e-12)
    return mu, np.maximum(var, floor)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(0, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(0, keepdims=True)


def _normalised(weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, np.float64)
    return weights / weights.sum()
