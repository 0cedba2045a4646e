"""A message interceptor in Python (the `message` role), built by componentize-py in
`cargo xtask plugins`: it adds the user property `stamped-by = <config name>` to every
publish on its filters, and drops one whose payload is empty (0x99, payload format
invalid, to a v5 publisher)."""

import json
from typing import List

from wit_world import exports
from wit_world.exports import message
from wit_world.imports import log

NAME = "python"


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        global NAME
        NAME = json.loads(config).get("name", NAME)
        log.log(log.Level.INFO, f"py-stamp ready as {NAME}")


def stamp(msg: message.Publish) -> message.Verdict:
    if not msg.payload:
        return message.Verdict_Drop(message.DropReason(0x99, "empty payload"))
    if msg.properties is None:  # a publish without MQTT 5 properties
        msg.properties = message.Properties([], None, None, None, False, None)
    msg.properties.user_properties.append(("stamped-by", NAME))
    return message.Verdict_Rewrite(msg)


class Message(exports.Message):
    # The host hands over a batch of publishes of one source: one verdict each, in order.
    def intercept(
        self, source: message.Source, batch: List[message.Publish]
    ) -> List[message.Verdict]:
        return [stamp(msg) for msg in batch]
