"""Column names of the sample table readiness builds and the later steps read (one place for all of them)."""

FILE = "_file"  # absolute image path
LABEL = "_label"  # label text (absent when the inference data has no label column)
IS_NG = "_is_ng"  # True for NG rows; <NA> where the label cell is empty
SPLIT = "_split"  # "train" or "valid" (training only)
MASK = "_mask"  # absolute mask path, "" for none (only with a mask column)
TRAIN, VALID = "train", "valid"
GENERATED_PATH_COLUMN = "image_path"  # the path column of the table listed from an inference folder without a CSV
