"""Train hash codes on a folder of your own images, without labels, from Python.

    python examples/train_on_a_folder.py photos/ --run-dir runs/photos

Every image under the folder (any nesting) is used; unreadable files are skipped with a warning.
The settings are the photos recipe (cibhash_ext/recipes/photos.json: a frozen ImageNet backbone and
its feature cache) unless an option below changes one.
The run directory gets the model (model.pt), a checkpoint, metrics.json and report.md, whose
diagnostics say how well augmented copies of held-out images find their originals.
"""

import argparse

import cibhash_ext as ch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--backbone", help="e.g. convnet: the small CNN from scratch (default: the recipe's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int, help="the side the images are resized to")
    args = parser.parse_args()

    # Only the options given go over the recipe.
    changes = {k: v for k, v in dict(backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size).items()
               if v is not None}
    if args.image_size:
        changes["augment"] = {"size": args.image_size}
    run_dir, metrics = ch.train(
        data=args.folder,                 # a folder path: dataset "folder", no labels needed
        run_dir=args.run_dir,
        code_lengths=(32, 64),
        progress=False,
        **changes,
    )
    for length, entry in metrics["cibhash"].items():
        recall, codes = entry["copy_recall"], entry["codes"]
        print(f"{length} bits: copy recall@1 {recall['1']:.3f}, @10 {recall['10']:.3f}; "
              f"{codes['distinct_codes']} distinct codes, largest bucket {codes['largest_bucket']}")
    print(f"run directory: {run_dir} (report: {run_dir}/report.md)")


if __name__ == "__main__":
    main()
