"""The table `edge-somad calibrate` prints: threshold, its uncertainty, pixel rule, chi2 fit, self-check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_somad.contracts.manifest import Manifest


def format_table(manifest: Manifest) -> str:
    from edge_somad.calibration import selfcheck

    cal, det = manifest.calibration, manifest.calibration.details
    rows = [
        ("threshold", f"{manifest.threshold:.6g}  ({cal.method})"),
        ("n images", f"{cal.n_images}  ({det.get('source', '')})"),
        ("target FRR", f"{cal.target_frr:.3%}"),
        ("achieved FRR", f"{det['achieved_frr_on_calibration_set']:.3%}"),
        ("FRR 95% upper", f"{det['frr_upper_95']:.2%}"),
        ("pixel threshold", f"{cal.pixel_threshold:.6g}"),
        ("min defect area", f"{cal.min_defect_area_px} px"),
        ("chi2 fit", _chi2_summary(det.get("chi2_fit", {"skipped": "not recorded"}))),
        ("self-check", selfcheck.summary(det.get("self_check"))),
        ("note", det["note"]),
    ]
    return "\n".join(f"{k:<16} {v}" for k, v in rows)


def _chi2_summary(report: dict[str, Any]) -> str:
    if "skipped" in report:
        return f"skipped: {report['skipped']}"
    verdict = "fits" if report["fits"] else "does NOT fit"
    return (f"chi2({report['d']}) {verdict}: KS {report['ks_statistic']:.3f}, "
            f"mean {report['mean']:.3g} vs {report['mean_expected']:g}")
