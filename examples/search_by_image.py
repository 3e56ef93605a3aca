"""Encode a folder of images with a trained run, index the codes, and search it with an image.

    python examples/search_by_image.py runs/photos photos/ photos/beach/0001.jpg -k 5

Prints the k most similar images (Hamming distance of their codes, ties to the earlier file).
"""

import argparse

import cibhash_ext as ch
from cibhash_ext.encode import readable_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of cibhash_ext.train / cibhash train")
    parser.add_argument("folder", help="the images to search")
    parser.add_argument("query", help="an image file")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()

    model = ch.load_model(args.run_dir)          # eval mode, weights checked, carries its transform
    nbits = max(model.code_lengths)
    files = readable_files([args.folder])          # sorted; unreadable files left out with a warning
    index = ch.HammingIndex(nbits)
    index.add(ch.encode(model, files, nbits=nbits))   # ids 0..n-1: positions in `files`
    distances, ids = index.search(ch.encode(model, [args.query], nbits=nbits), args.k)
    for rank, (d, i) in enumerate(zip(distances[0].tolist(), ids[0].tolist())):
        print(f"{rank + 1}. {files[i]} (distance {d})")


if __name__ == "__main__":
    main()
