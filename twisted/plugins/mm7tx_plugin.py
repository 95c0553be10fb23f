"""The ``twistd mm7`` plugin: lazy, so ``twistd --help`` imports nothing of ours."""

from twisted.application.service import ServiceMaker

mm7 = ServiceMaker(
    "mm7tx",
    "mm7tx.app.tap",
    "An MM7 gateway: MM7 requests in, email out over ESMTP.",
    "mm7",
)
