// Types of walcast-client (walcast-client.js).

/** A row as the listing and change events give it. */
export type Row = Record<string, unknown>;

/** One change event (walcast's contract, section 1). */
export interface ChangeEvent {
  id: string;
  op: 'insert' | 'update' | 'delete' | 'truncate' | 'read';
  schema: string;
  table: string;
  key: Row | null;
  new: Row | null;
  old: Row | null;
  changed?: string[];
  unchanged_toast?: string[];
  lsn: string;
  commit_lsn: string;
  xid: number;
  commit_time: string;
  oversize?: boolean;
}

/** What a change did to the feed's rows. */
export interface Change<R extends Row = Row> {
  op: 'insert' | 'update' | 'delete' | 'truncate' | 'read';
  key: Row | null;
  /** The row before (null when the feed did not hold it). */
  old: R | null;
  /** The row after (null for delete and truncate). */
  new: R | null;
  /** Columns whose value changed. */
  changed: string[];
  /** The event (null when a row was read again after an oversize event). */
  event: ChangeEvent | null;
  /** For truncate: the rows it removed. */
  removed?: R[];
}

export type Status = 'connecting' | 'catching-up' | 'live' | 'resyncing' | 'offline';

export interface Ready {
  latest_id: string | null;
}

export interface Resync {
  reason?: string;
  latest_id?: string | null;
}

export declare class WalcastError extends Error {
  kind: 'http' | 'unreachable' | 'unauthorized' | 'refused' | 'subscribe';
  status?: number;
  code?: string;
}

/** A subscription target, as the gateway's `subscribe` takes it. */
export interface Target {
  /** "schema.table"; the feed's table when omitted. */
  table?: string;
  key?: Row;
  /** Only these columns (and the key) in `new` and `old`. */
  fields?: string[];
  /** false: `old` is null. */
  old?: boolean;
}

export interface Ack {
  ok: boolean;
  error?: string;
}

export interface FeedOptions {
  /** walcast's base URL, e.g. "http://localhost:8080"; the page's origin when omitted. */
  url?: string;
  /** Bearer token for the listing and the Socket.IO handshake; a function is asked each time. */
  token?: string | null | (() => string | null | undefined);
  /** Only these columns (and the key) are kept; sent as the subscription's `fields`. */
  fields?: string[];
  /** false: ask for events without `old` (smaller; the feed does not need it). */
  old?: boolean;
  /** Only these rows (key objects, e.g. [{id: 42}]); subscribed to one by one. */
  keys?: Row[];
  /** Rows per listing page (default 500). */
  pageSize?: number;
  /** socket.io-client's `io`; else the global `io`, else `import('socket.io-client')`. */
  io?: (...args: unknown[]) => unknown;
  /** fetch to use; the global one by default. */
  fetch?: typeof globalThis.fetch;
  /** Engine.IO transports, in order of preference (default websocket, polling). */
  transports?: string[];
}

export interface TableOptions extends FeedOptions {
  /** "schema.table" of the change events. */
  table: string;
  /** The listing's path, e.g. "/orders"; it takes limit and after, and answers next_after and snapshot. */
  path: string;
  /** Key column(s); "id" by default. */
  key?: string | string[];
  /** The listing's array field; the path's last segment by default. */
  field?: string;
}

export interface FeedEvents<R extends Row> {
  change: Change<R>;
  ready: Ready;
  status: Status;
  load: R[];
  event: ChangeEvent;
  resync: Resync;
  error: WalcastError;
}

export declare class Feed<R extends Row = Row> {
  readonly status: Status;
  readonly size: number;
  /** The current rows, in key order. */
  rows(): R[];
  /** One row by key: a value for a one-column key, or a key object. */
  get(key: unknown): R | undefined;
  on<E extends keyof FeedEvents<R>>(name: E, listener: (value: FeedEvents<R>[E]) => void): () => void;
  off<E extends keyof FeedEvents<R>>(name: E, listener: (value: FeedEvents<R>[E]) => void): void;
  /** Resolves when the status is "live". */
  untilLive(): Promise<void>;
  subscribe(target: Target): Promise<Ack>;
  unsubscribe(target: Target): Promise<Ack>;
  /** Reconnects (e.g. after the token changed). */
  reconnect(): void;
  close(): void;
}

export interface Order extends Row {
  id: number;
  customer_name: string;
  product_name: string;
  status: string;
  created_at: string;
  updated_at: string;
}

export declare function feed<R extends Row = Row>(options: TableOptions): Feed<R>;
export declare function orders(options?: FeedOptions): Feed<Order>;

export declare class RowBook {
  constructor(options: { table: string; key: string[]; fields?: string[] | null; keys?: Row[] | null });
  load(pages: { rows: Row[]; snapshot: string }[]): void;
  apply(event: ChangeEvent): Change | null;
  sorted(): Row[];
  get(key: unknown): Row | undefined;
  readonly size: number;
}

export interface Snapshot {
  xmin: number;
  xmax: number;
  xip: Set<number>;
}
export declare function parseSnapshot(text: string): Snapshot;
export declare function snapshotSees(snapshot: Snapshot, xid: number): boolean;
export declare function xidPrecedes(a: number, b: number): boolean;
export declare function maxId(a: string | null, b: string | null): string | null;

declare const walcast: {
  feed: typeof feed;
  orders: typeof orders;
  Feed: typeof Feed;
  RowBook: typeof RowBook;
  WalcastError: typeof WalcastError;
  parseSnapshot: typeof parseSnapshot;
  snapshotSees: typeof snapshotSees;
  xidPrecedes: typeof xidPrecedes;
  maxId: typeof maxId;
};
export default walcast;
