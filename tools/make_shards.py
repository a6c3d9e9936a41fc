#!/usr/bin/env python
"""Write webdataset shards from JSONL records and image files, or from an image-folder tree.

  make_shards.py pairs          --from captions.jsonl --images img/ --out shards/pairs-%06d.tar [--maxcount 1000]
  make_shards.py labelled       --from labels.jsonl   --images img/ --out shards/cls-%06d.tar
  make_shards.py labelled       --folder train/                     --out shards/cls-%06d.tar   (root/<class>/<image>)
  make_shards.py interleaved    --from docs.jsonl     --images img/ --out shards/docs-%06d.tar

JSONL records: pairs {"image": path, "caption" (or "text"): str, "label"?: int, "key"?: str}; labelled {"image",
"label"}; interleaved {"slots": [{"text": str} | {"image": path}, ...], "key"?}. Image paths are relative to --images.
"""

import json
import sys

from vfm.cli import OneLineErrorParser
from vfm.data import shard_writer
from vfm.errors import VfmError

WRITERS = {"pairs": shard_writer.write_pair_shards, "labelled": shard_writer.write_labelled_shards,
           "interleaved": shard_writer.write_document_shards}


def main(argv: list[str] | None = None) -> int:
    """Parse, write the shards, print their paths as JSON; a VfmError is one line on stderr, exit 2."""
    parser = OneLineErrorParser(prog="make_shards.py", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(WRITERS), help="what a sample holds")
    parser.add_argument("--from", dest="records", help="JSONL file of records")
    parser.add_argument("--images", default=".", help="folder the records' image paths are relative to")
    parser.add_argument("--folder", help="an image-folder tree root/<class>/<image> (labelled only)")
    parser.add_argument("--out", required=True, help="printf pattern of the shard paths, e.g. shards/pairs-%%06d.tar")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        if args.folder is not None:
            if args.kind != "labelled" or args.records is not None:
                parser.error("--folder goes with the 'labelled' kind and without --from")
            records, image_root = shard_writer.image_folder_records(args.folder), args.folder
        elif args.records is None:
            parser.error("expected --from FILE.jsonl (or --folder for labelled shards)")
        else:
            records, image_root = shard_writer.read_jsonl(args.records), args.images
        paths = WRITERS[args.kind](records, image_root, args.out, args.maxcount)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"samples": len(records), "shards": paths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
