"""THREAD (RFC 5256 section 4): ORDEREDSUBJECT and REFERENCES over the cached header fields.

``thread(mailbox, uids, algorithm)`` returns a forest of ``Node`` (``uid`` None for a dummy, a
message that is referred to but not in the set); the IMAP layer writes it.  Everything is
iterative, so a pathological reference chain cannot exhaust the Python stack.
"""

from __future__ import annotations

import re

from mailserver.storage import mime
from mailserver.storage.sort import base_subject, headers_of, sent_date

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_MSG_ID = re.compile(rb"<([^<>\s]*)>")
_FIELDS = {"subject", "date", "message-id", "in-reply-to", "references"}


class Node:
    """A thread container: ``uid`` (None: dummy), ``children`` in order."""

    __slots__ = ("uid", "date", "subject", "is_reply", "parent", "children", "order")

    def __init__(self, uid=None, date=0, subject="", is_reply=False, order=0):
        self.uid, self.date, self.subject, self.is_reply, self.order = uid, date, subject, is_reply, order
        self.parent = None
        self.children: list = []

    def __repr__(self):
        return f"Node({self.uid}, {self.children!r})"


class _Message:
    __slots__ = ("uid", "date", "subject", "is_reply", "message_id", "refs")


def _ids(value: bytes | None) -> list:
    return [m.decode("latin-1") for m in _MSG_ID.findall(value or b"") if m]


async def _messages(mailbox, uids) -> list:
    out = []
    async for info, fields in headers_of(mailbox, sorted(uids), _FIELDS):
        m = _Message()
        m.uid = info.uid
        m.date = sent_date(fields.get("date"), info.internaldate)
        subject = mime.decode_words(fields["subject"]) if "subject" in fields else ""
        m.subject, m.is_reply = base_subject(subject)
        ids = _ids(fields.get("message-id"))
        m.message_id = ids[0] if ids else None
        refs = _ids(fields.get("references"))
        if not refs:
            refs = _ids(fields.get("in-reply-to"))[:1]
        m.refs = refs
        out.append(m)
    return out


async def thread(mailbox, uids, algorithm: str) -> list:
    """The threads of ``uids`` (roots in order) by ``algorithm`` (one of ``ALGORITHMS``)."""
    messages = await _messages(mailbox, uids)
    if algorithm == "ORDEREDSUBJECT":
        return ordered_subject(messages)
    return references(messages)


def _date_key(node: Node):
    return node.date, node.order


def _node(m, order: int) -> Node:
    return Node(m.uid, m.date, m.subject, m.is_reply, order)


def ordered_subject(messages) -> list:
    """Messages grouped by base subject; in each group the earliest is the parent of the others
    (siblings by date); groups ordered by the date of their first message."""
    groups: dict = {}
    for order, m in enumerate(messages):
        groups.setdefault(m.subject, []).append(_node(m, order))
    roots = []
    for nodes in groups.values():
        nodes.sort(key=_date_key)
        first = nodes[0]
        for child in nodes[1:]:
            child.parent = first
            first.children.append(child)
        roots.append(first)
    roots.sort(key=_date_key)
    return roots


def _is_ancestor(a: Node, b: Node) -> bool:
    """Is ``a`` ``b`` or one of its ancestors?"""
    while b is not None:
        if b is a:
            return True
        b = b.parent
    return False


def _unlink(node: Node) -> None:
    if node.parent is not None:
        node.parent.children.remove(node)
        node.parent = None


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def references(messages) -> list:
    """RFC 5256 REFERENCES, steps 1 to 6."""
    table: dict = {}
    every: list = []
    for order, m in enumerate(messages):
        # (1A) link the referenced messages parent to child, never changing an existing
        # parent and never making a loop.
        prev = None
        for mid in m.refs:
            node = table.get(mid)
            if node is None:
                node = table[mid] = Node(order=order)
                every.append(node)
            if prev is not None and node.parent is None and not _is_ancestor(node, prev):
                _link(prev, node)
            prev = node
        # (1B) the message's own container (a duplicate Message-ID gets a container of its own)
        node = table.get(m.message_id) if m.message_id else None
        if node is None or node.uid is not None:
            node = Node(order=order)
            every.append(node)
            if m.message_id and m.message_id not in table:
                table[m.message_id] = node
        node.uid, node.date, node.subject, node.is_reply, node.order = (
            m.uid, m.date, m.subject, m.is_reply, order)
        # (1C) its parent is the last reference (replacing what 1A may have guessed)
        parent = table.get(m.refs[-1]) if m.refs else None
        if parent is not None and _is_ancestor(node, parent):
            parent = node.parent          # it would make a loop: keep what 1A gave
        if parent is not node.parent:
            _unlink(node)
            if parent is not None:
                _link(parent, node)
    # (2) the root set; (3) the table is no longer needed
    roots = [n for n in every if n.parent is None]
    # (4) prune dummies
    roots = _prune(roots)
    # (5) sort the roots by date (a dummy by its first child's), then group by subject
    _sort_level(roots)
    roots = _group_by_subject(roots)
    # (6) sort every set of siblings by date
    _sort_all(roots)
    return roots


def _prune(roots: list) -> list:
    """RFC 5256 step 4: drop empty dummies; replace a dummy by its children unless that would
    put several children at the root level."""
    # Post-order over the forest: children are pruned before their parent.
    order = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        if not node.children:
            continue
        kept = []
        for child in node.children:
            if child.uid is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)      # (an empty dummy just disappears)
            else:
                kept.append(child)
        node.children = kept
    out = []
    for root in roots:
        if root.uid is not None:
            out.append(root)
        elif len(root.children) == 1:
            child = root.children[0]
            child.parent = None
            out.append(child)
        elif root.children:
            out.append(root)
    return out


def _effective(node: Node) -> Node:
    """The node whose date and subject stand for ``node`` (a dummy: its first child)."""
    while node.uid is None and node.children:
        node = node.children[0]
    return node


def _sort_level(nodes: list) -> None:
    for node in nodes:
        if node.uid is None:
            node.children.sort(key=lambda n: _date_key(_effective(n)))
    nodes.sort(key=lambda n: _date_key(_effective(n)))


def _group_by_subject(roots: list) -> list:
    table: dict = {}
    for root in roots:
        eff = _effective(root)
        subject = eff.subject
        if not subject:
            continue
        old = table.get(subject)
        if old is None:
            table[subject] = root
            continue
        old_eff = _effective(old)
        if (root.uid is None and old.uid is not None) or (old_eff.is_reply and not eff.is_reply
                                                          and root.uid is not None and old.uid is not None):
            table[subject] = root
    out = []
    replaced: dict = {}
    removed = set()
    for root in roots:
        eff = _effective(root)
        subject = eff.subject
        target = table.get(subject) if subject else None
        if target is None or target is root:
            out.append(root)
            continue
        target = replaced.get(id(target), target)
        if target is root:
            out.append(root)
            continue
        removed.add(id(root))
        if root.uid is None and target.uid is None:
            for child in root.children:
                _link(target, child)
            root.children = []
        elif target.uid is None:
            _link(target, root)
        elif root.uid is None:
            # (cannot happen after step A, which prefers a dummy; kept for safety)
            _link(root, target)
            removed.discard(id(root))
            removed.add(id(target))
            replaced[id(target)] = root
            table[subject] = root
            out = [root if n is target else n for n in out]
            if root not in out:
                out.append(root)
        elif not _effective(target).is_reply and eff.is_reply:
            _link(target, root)
        else:
            dummy = Node(order=target.order)
            out = [dummy if n is target else n for n in out]
            _link(dummy, target)
            _link(dummy, root)
            replaced[id(target)] = dummy
            table[subject] = dummy
    return [n for n in out if id(n) not in removed]


def _sort_all(roots: list) -> None:
    stack = [roots]
    levels = []
    while stack:
        level = stack.pop()
        levels.append(level)
        for node in level:
            if node.children:
                stack.append(node.children)
    # Deepest levels first, so a dummy's first child is final before the dummy is placed.
    for level in reversed(levels):
        level.sort(key=lambda n: _date_key(_effective(n)))
