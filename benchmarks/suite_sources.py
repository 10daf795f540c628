"""Where each development-suite category comes from: one ``Source`` per category (read by suite_data.py).

Every source names a public GitHub repository fetched with the ``fetch`` tool, the commit it was read at, the
folder and the layout its files come in, and the licence as the repository states it. benchmarks/SUITE.md says
the same in prose, with counts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One category taken from one fetched repository."""

    category: str
    repo: str  # owner/name on GitHub
    commit: str  # pinned commit (need not be HEAD)
    path: str  # folder inside the repository ("" = the repository root)
    licence: str
    # "mvtec": train/good, test/<type>, ground_truth/<type>; "pairs": <split>/images + <split>/masks;
    # "labelme_wear": wear sequences with labelme polygons (BSData); "graded_csv": one folder + a graded label list;
    # "gt_manifest": a SageMaker Ground Truth manifest with masks (test_good = path prefix of the good test images);
    # "class_folders": one folder of good images (subset) and one per defect type, image-level only.
    layout: str
    test_good: str = "test/good"  # mvtec: folder of held-out good images ("" = take every 5th train image)
    mask_name: str = "{stem}_mask.png"  # mvtec: mask file name inside ground_truth/<type>/
    train_splits: tuple[str, ...] = ("train",)  # pairs: splits whose empty-mask images are train/good
    test_splits: tuple[str, ...] = ("test",)  # pairs: splits whose empty-mask images are test/good
    subset: str = ""  # labelme_wear: image-name suffix; graded_csv: the label list's third column; class_folders: good
    manifest: str = ""  # gt_manifest: the Ground Truth manifest, relative to path
    max_side: int = 0  # longer side kept for this category (0 = the --max-side option)
    max_train: int = 350  # caps keep the suite runnable on two cores; evenly spaced over the sorted names
    max_test_good: int = 0  # 0 = no cap
    max_test_defective: int = 0
    note: str = ""


SOURCES: tuple[Source, ...] = (
    Source(
        category="juice_bottle",
        repo="jasonjin34/logicAD",
        commit="f222feb67c7644d12c057990ca6b3a1b034c60b7",
        path="datasets/juice_bottle",
        licence="CC BY-NC-SA 4.0 (MVTec Software GmbH; MVTec LOCO AD, license.txt/readme.txt in the folder)",
        layout="mvtec",
        test_good="validation/good",
        mask_name="{stem}.png",
        note=(
            "MVTec LOCO AD juice_bottle from the repo history (refs/pull/13/head; at HEAD datasets/ are symlinks): "
            "train/good 335, validation/good 54, test/logical_anomalies 142 + flattened masks. LOCO's test/good (94) "
            "and structural_anomalies (94) are not in the copy; validation/good is used as test/good."
        ),
    ),
    Source(
        category="metal_plate",
        repo="BupeshKumarR/defect-segmentation-for-mpdd",
        commit="5d8b9cddfa7af2f145bafaaf6eca53294f5aa7b0",
        path="data_supervised/metal_plate",
        licence="MPDD (Jezek et al., 2021), research use; licence not stated in the host repo (unverified)",
        layout="pairs",
        train_splits=("train", "val"),
        test_splits=("test",),
        note=(
            "MPDD metal_plate re-split by the host repo (prepare_segmentation.py: 512x512, train+val = MPDD "
            "train/good + 70% of defective, test = MPDD test/good + rest; one mask per image, empty for good; "
            "10 defective images stored twice). Defect types are lost: all defective images -> 'defective'."
        ),
    ),
    Source(
        category="ball_screw",
        repo="2Obe/BSData",
        commit="7204b28a621733c01cd75899ed9ea27f6ea0b9e3",
        path="",
        licence="CC BY-SA 4.0 (LICENSE in the repository; Schlagenhauf & Landwehr, KIT, 2021)",
        layout="labelme_wear",
        subset="crop_2",
        max_side=1130,
        max_test_good=170,
        note=(
            "BSData ball-screw-drive spindle surfaces, BSD type 2, crop_2 frames (1130x460, 15 camera positions x "
            "57 frames taken over weeks of wear). Pitting is annotated as labelme polygons. A frame of a position "
            "before that position's first annotated frame is good; unannotated frames after it are dropped "
            "(annotation gaps, not shown to be pitting-free). Split by position: even-numbered positions (sorted "
            "by name) -> train/good, odd-numbered -> test/good and test/pitting, so test frames come from camera "
            "positions not used for training. A stray copy of one frame in data/BSD/test/ is ignored. crop_1 frames "
            "(1540x645, nearly all pitted) and BSD type 1 (varying sizes, all pitted) are not used."
        ),
    ),
    Source(
        category="solar_cell_poly",
        repo="zae-bayern/elpv-dataset",
        commit="411fd729dad19511883306aa85e52f1962cba581",
        path="src/elpv_dataset/data",
        licence="CC BY-NC-SA 4.0 for the images (LICENSE; code Apache-2.0)",
        layout="graded_csv",
        subset="poly",
        max_test_good=130,
        max_test_defective=120,
        note=(
            "ELPV electroluminescence images of polycrystalline solar cells (300x300 grey, 44 modules). Each cell is "
            "graded 0, 1/3, 2/3 or 1 (defect probability): 0 -> good, 1 -> defective (cracks, inactive regions, "
            "finger interruptions), 1/3 and 2/3 (uncertain) dropped. No pixel masks: image-level labels only. "
            "Good cells: every 5th sorted name -> test/good, the rest -> train/good."
        ),
    ),
    Source(
        category="solar_cell_mono",
        repo="zae-bayern/elpv-dataset",
        commit="411fd729dad19511883306aa85e52f1962cba581",
        path="src/elpv_dataset/data",
        licence="CC BY-NC-SA 4.0 for the images (LICENSE; code Apache-2.0)",
        layout="graded_csv",
        subset="mono",
        max_train=25,
        max_test_defective=125,
        note=(
            "Few-shot category: ELPV electroluminescence images of monocrystalline solar cells (300x300 grey), "
            "graded as for solar_cell_poly (0 -> good, 1 -> defective, 1/3 and 2/3 dropped; no pixel masks). "
            "The set has 588 good mono cells; train/good is capped at 25 evenly spaced names (of the 470 left "
            "after every 5th sorted name -> test/good) to stand for a line with few good parts."
        ),
    ),
    Source(
        category="cookie",
        repo="aws-samples/amazon-lookout-for-vision",
        commit="14bed61caa82d07bcbd32ca583359eacfd954c30",
        path="computer-vision-defect-detection/cookie-dataset",
        licence="CC BY-SA 4.0 (the repository's LICENSE/LICENSE-SUMMARY; sample code MIT-0)",
        layout="gt_manifest",
        manifest="dataset-files/manifests/template.manifest",
        test_good="test-images/test-normal-",
        max_train=30,
        note=(
            "Few-shot object category: photos of chocolate-chip cookies on a baking tray (576x768 portrait), each "
            "cookie shaped and placed differently. The Ground Truth manifest labels 31 training photos normal and "
            "32 anomalous (cracked / broken), the latter with segmentation masks (RGBA, class colour #23A436; "
            "the alpha channel > 127 is the mask). test-images/ holds 14 test-normal and 8 test-anomaly photos "
            "without masks; the 8 are not used. train/good is capped at 30 of the 31 normals."
        ),
    ),
    Source(
        category="alien_toy",
        repo="aws-samples/amazon-lookout-for-vision",
        commit="14bed61caa82d07bcbd32ca583359eacfd954c30",
        path="aliens-dataset",
        licence="CC BY-SA 4.0 (the repository's LICENSE/LICENSE-SUMMARY; sample code MIT-0)",
        layout="class_folders",
        subset="normal",
        note=(
            "Green plastic alien figurines on white (550x380), photographed one by one, so pose and placement vary a "
            "little between good samples. normal/ 58, anomaly/ 60 (missing or broken limbs and head, marker "
            "scribbles). No masks and no split: every 5th sorted normal -> test/good (11)."
        ),
    ),
)

# Categories already kept under --shared (relative path of the MVTec-layout folder).
SHARED_LINKS: dict[str, str] = {
    "bottle": "mvtec_ad/bottle",
    "toothbrush": "mvtec_ad/toothbrush",
    "screw": "mvtec_ad/screw",
    "hazelnut_toy": "hazelnut_toy/hazelnut_toy",
    "magnetic_tile": "magnetic_tile/magnetic_tile",
}
