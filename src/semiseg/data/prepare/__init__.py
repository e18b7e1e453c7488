"""Commands that turn a downloaded dataset into the split-file layout semiseg reads.

    python -m semiseg.data.prepare.cityscapes ROOT   *_labelIds.png -> *_labelTrainIds.png
    python -m semiseg.data.prepare.coco ROOT         instance JSON -> masks/<id>.png (81 classes)
    python -m semiseg.data.prepare.ade20k ROOT       splits/val.txt of ADEChallengeData2016
    python -m semiseg.data.prepare.splits ROOT --count N | --fraction 1/8   a new split

Each one writes only what is missing (unless --overwrite/--force), atomically, and prints one
line; bad input ends with one `error: ...` line and exit code 2.
"""
