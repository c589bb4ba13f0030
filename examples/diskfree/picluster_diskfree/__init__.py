"""A picluster task from a package of its own: `diskfree`, how full a file system is.

    picluster enqueue --all diskfree --arg path=/ --wait 30
"""

from __future__ import annotations

import shutil
from typing import Any

from picluster.plugins import task
from picluster.schema import Schema, Str
from picluster.tasks import TaskContext

__all__ = ["diskfree"]


@task(Schema({"path": Str(max_length=4096, pattern=r"/.*", what="an absolute path",
                          default="/")}))
def diskfree(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Total, used and free bytes of the file system that holds `path`."""
    usage = shutil.disk_usage(args["path"])
    return {"path": args["path"], "total": usage.total, "used": usage.used,
            "free": usage.free, "percent_used": round(100 * usage.used / usage.total, 1)}
