"""walcast's orders, live in Python: the hand-off walcast-client does.

1. Load every page of GET /orders (following next_after); each page has
   the snapshot it was read with.
2. Connect Socket.IO with the first page's snapshot: walcast sends every
   change that snapshot does not see, then `ready`. A row from a later page
   ignores the changes its own page's snapshot saw, so each change is
   applied exactly once; a row remembers the id of the last change applied
   to it, so a change delivered again is dropped.
3. Reconnect with `since` (the newest change id received); on `resync`,
   load again and connect with the new snapshot.

    pip install -r requirements.txt
    python orders_feed.py --url http://localhost:8080

It prints one JSON line per change and "live" once caught up. With
--print-rows-on-stdin it also answers each line read on stdin with
{"t":"rows","live":…,"rows":[…]} (how walcast's test suite drives it).
"""

import argparse
import json
import sys
import threading
import time

import requests
import socketio


def parse_snapshot(text):
    """`pg_current_snapshot()` text, to 32-bit xids as events carry them."""
    xmin, xmax, xip = text.split(":")
    low32 = lambda digits: int(digits) & 0xFFFFFFFF
    return low32(xmin), low32(xmax), {low32(x) for x in xip.split(",") if x}


def xid_precedes(a, b):
    """Whether 32-bit xid a is older than b, modulo 2^32."""
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def snapshot_sees(snapshot, xid):
    _, xmax, xip = snapshot
    return xid_precedes(xid & 0xFFFFFFFF, xmax) and xid not in xip


class OrdersFeed:
    def __init__(self, url, token=None, page_size=500):
        self.url = url.rstrip("/")
        self.token = token
        self.page_size = page_size
        self.lock = threading.RLock()
        self.rows = {}  # id -> {"row", "event_id", "snapshot"}
        self.tombstones = {}  # id -> id of the deleting event
        self.first_snapshot = None
        self.last_id = None
        self.live = False
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=5)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("change", self.on_change)
        self.sio.on("ready", self.on_ready)
        self.sio.on("resync", self.on_resync)

    def load(self):
        """Every page of the listing, retried until it loads."""
        delay = 0.5
        while True:
            try:
                return self.load_once()
            except requests.RequestException as error:
                print(f"cannot load the listing: {error}; retrying", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 10)

    def load_once(self):
        """Every page of the listing; each row keeps its page's snapshot."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        rows, tombstones, first, after = {}, {}, None, None
        while True:
            params = {"limit": self.page_size}
            if after is not None:
                params["after"] = after
            page = requests.get(f"{self.url}/orders", params=params, headers=headers, timeout=15)
            page.raise_for_status()
            page = page.json()
            snapshot = parse_snapshot(page["snapshot"])
            first = first or page["snapshot"]
            for order in page["orders"]:
                rows[order["id"]] = {"row": order, "event_id": None, "snapshot": snapshot}
            after = page.get("next_after")
            if after is None:
                break
        with self.lock:
            self.rows, self.tombstones = rows, tombstones
            self.first_snapshot, self.last_id = first, None

    def auth(self):
        auth = {"token": self.token} if self.token else {}
        if self.last_id is not None:
            auth["since"] = self.last_id
        elif self.first_snapshot is not None:
            auth["snapshot"] = self.first_snapshot
        return auth

    def start(self):
        self.load()
        self.connect()

    def connect(self):
        """Connects, retried until it does; python-socketio reconnects by
        itself after that, calling `auth` again each time, so the newest
        cursor goes with it."""
        delay = 0.5
        while True:
            try:
                self.sio.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=15)
                return
            except socketio.exceptions.ConnectionError as error:
                print(f"cannot connect: {error}; retrying", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 10)

    def on_connect(self):
        self.live = False
        self.sio.emit("subscribe", {"table": "public.orders"})

    def on_disconnect(self, *_reason):
        self.live = False

    def on_ready(self, payload):
        with self.lock:
            latest = (payload or {}).get("latest_id")
            if latest is not None and (self.last_id is None or latest > self.last_id):
                self.last_id = latest
            self.live = True
        print(json.dumps({"t": "live", "latest_id": latest}), flush=True)

    def on_resync(self, payload):
        # The cursor is older than what walcast holds: load again and hand
        # over with the new listing's snapshot.
        print(json.dumps({"t": "resync", "reason": (payload or {}).get("reason")}), flush=True)
        threading.Thread(target=self.resync, daemon=True).start()

    def resync(self):
        self.sio.disconnect()
        self.load()
        self.connect()

    def on_change(self, event):
        with self.lock:
            if self.last_id is None or event["id"] > self.last_id:
                self.last_id = event["id"]
            if event["schema"] != "public" or event["table"] != "orders":
                return
            if self.apply(event):
                print(json.dumps({"t": "change", "op": event["op"], "key": event["key"]}), flush=True)

    def apply(self, event):
        """Applies one change once; False when it was applied already."""
        if event["op"] == "truncate":
            for key in self.rows:
                self.tombstones[key] = event["id"]
            self.rows.clear()
            return True
        key = event["key"]["id"]
        entry = self.rows.get(key)
        last = entry["event_id"] if entry else self.tombstones.get(key)
        if last is not None and event["id"] <= last:
            return False  # delivered again
        if entry and entry["event_id"] is None and snapshot_sees(entry["snapshot"], event["xid"]):
            return False  # its listing page shows it
        if event["op"] == "delete":
            self.rows.pop(key, None)
            self.tombstones[key] = event["id"]
        elif event.get("new") is not None:
            row = dict(entry["row"]) if entry else {}
            row.update(event["new"])  # unchanged TOAST columns keep their value
            self.rows[key] = {"row": row, "event_id": event["id"], "snapshot": None}
            self.tombstones.pop(key, None)
        return True

    def snapshot(self):
        with self.lock:
            return {
                "t": "rows",
                "live": self.live,
                "rows": [self.rows[key]["row"] for key in sorted(self.rows)],
            }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--token")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--print-rows-on-stdin", action="store_true")
    args = parser.parse_args()
    feed = OrdersFeed(args.url, args.token, args.page_size)
    # Loading and connecting retry until they work; meanwhile the rows
    # asked for on stdin are answered (not live yet).
    threading.Thread(target=feed.start, daemon=True).start()
    try:
        if args.print_rows_on_stdin:
            for _line in sys.stdin:
                print(json.dumps(feed.snapshot()), flush=True)
        else:
            # Not sio.wait(): a resync disconnects and connects again.
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        feed.sio.disconnect()


if __name__ == "__main__":
    main()
