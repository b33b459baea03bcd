"""What the parts of the Mobile-O node share: its settings, the loaded model, its lifecycle state, outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobile_o_ros.ros import params

#: Prefix of every log line of the node.
TAG = "[mobile_o]"


@dataclass
class NodeState:
    """The node's shared state; the lifecycle callbacks write it, the parts read it.

    ``model`` belongs to the worker thread: the parts only hand it to jobs they submit.
    """

    #: Parameter values as read at configure (the dynamic ones kept up to date).
    cfg: params.Settings
    #: Fully qualified node name, for messages (``/mobile_o/mobile_o``).
    name: str
    model: Any = None
    #: ``model.info()`` once loaded (name, backend, ...).
    model_info: dict[str, Any] = field(default_factory=dict)
    #: True between activate and deactivate: requests are served.
    active: bool = False
    #: Lifecycle state label: unconfigured, inactive, active or finalized.
    label: str = "unconfigured"
    #: Why the last transition failed ("" when it did not).
    last_error: str = ""
    #: Lifecycle publishers of ``answer`` and ``generated_image`` (None while unconfigured).
    answer_pub: Any = None
    image_pub: Any = None

    def publish_image(self, image_msg: Any) -> None:
        """Publish a generated or edited image on ``generated_image`` while active."""
        pub = self.image_pub
        if pub is not None and self.active:
            pub.publish(image_msg)
