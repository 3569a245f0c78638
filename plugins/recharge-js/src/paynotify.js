// paynotify.js: the JavaScript SDK for paynotify handlers.
//
// A handler module exports `handlePaid(order, notification)` (sync or async) and optionally
// `runTask(task)`; `build.mjs` wraps it with `exportHandler` into the `handler` world of
// wit/plugin.wit. This file turns the raw WIT values (camelCase records, BigInt s64 numbers,
// variant errors) into what a vk-uni-pay author expects: snake_case orders, plain numbers,
// `db.collection("users").doc(id).inc("balance", n)`, and thrown errors.
//
// `handlePaid` runs inside the payment transaction: every db write and task it makes commits
// with the payment or not at all. Throwing (or returning a rejected promise) rolls it back and
// the provider retries. Side effects outside the database belong in a task: `http.request`
// is refused (`http-denied`) in `handlePaid` unless the manifest sets
// `http_in_payment = true`, and the notify-key `crypto` calls need `crypto = true`.

import * as rawDb from 'paynotify:plugin/db@0.1.0';
import { log as rawLog } from 'paynotify:plugin/log@0.1.0';
import { send as rawSend } from 'paynotify:plugin/http@0.1.0';
import * as rawCrypto from 'paynotify:plugin/crypto@0.1.0';
import { enqueue as rawEnqueue } from 'paynotify:plugin/tasks@0.1.0';
import { get as rawConfigGet } from 'paynotify:plugin/config@0.1.0';

/** Version of the `paynotify:plugin` WIT package this SDK speaks. */
export const WORLD_VERSION = '0.1.0';

/** A handler failure with a short machine-readable `code` (stored on the order, logged). */
export class HandlerError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'HandlerError';
    this.code = code;
  }
}

// The err payload of a failed import call: componentize-js throws an error carrying it.
function payloadOf(e) {
  return e !== null && typeof e === 'object' && 'payload' in e ? e.payload : e;
}

// Calls a db import, turning its `db-error` variant into a HandlerError `db-<kind>` whose
// message reads like the Rust SDK's (`denied: collection ...`).
function dbCall(f) {
  try {
    return f();
  } catch (e) {
    const p = payloadOf(e);
    if (p && typeof p === 'object' && typeof p.tag === 'string') {
      const words = { 'not-a-number': 'not a number' };
      throw new HandlerError(`db-${p.tag}`, `${words[p.tag] ?? p.tag}: ${p.val ?? ''}`);
    }
    throw e;
  }
}

function jsonText(value, what) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new HandlerError('invalid-json', `${what} does not serialise as JSON: ${e.message}`);
  }
  if (text === undefined) {
    throw new HandlerError('invalid-json', `${what} is not a JSON value`);
  }
  return text;
}

function toInt64(n, what) {
  if (typeof n === 'bigint') return n;
  if (!Number.isSafeInteger(n)) {
    throw new HandlerError('db-invalid', `invalid: ${what} must be an integer, got ${String(n)}`);
  }
  return BigInt(n);
}

// Marker for `doc.update({ field: _.inc(n) })`, vk-uni-pay's `db.command.inc`.
class Increment {
  constructor(delta) {
    this.delta = delta;
  }
}

/** vk-uni-pay's `db.command` (`_`): `_.inc(n)` inside `doc.update({...})`. */
export const _ = {
  inc: (delta) => new Increment(delta),
};

/** One document: `db.collection(name).doc(id)`. */
class Doc {
  constructor(collection, id) {
    this.collection = collection;
    this.id = String(id);
  }
  /** The document as an object, or null if it does not exist. */
  get() {
    const text = dbCall(() => rawDb.get(this.collection, this.id));
    return text === undefined ? null : JSON.parse(text);
  }
  /** Replaces the document (creating it). */
  set(data) {
    dbCall(() => rawDb.set(this.collection, this.id, jsonText(data, 'document'), false));
  }
  /**
   * Merges top-level fields (creating the document); a field given as `_.inc(n)` is
   * incremented atomically. Returns `{ updated: 1 }` like vk-uni-pay.
   */
  update(data) {
    const plain = {};
    for (const [field, value] of Object.entries(data)) {
      if (value instanceof Increment) {
        this.inc(field, value.delta);
      } else {
        plain[field] = value;
      }
    }
    if (Object.keys(plain).length > 0) {
      dbCall(() => rawDb.set(this.collection, this.id, jsonText(plain, 'document'), true));
    }
    return { updated: 1 };
  }
  /** Atomically adds `delta` to an integer field (absent counts as 0); returns the new value. */
  inc(field, delta) {
    const d = toInt64(delta, 'the increment');
    return Number(dbCall(() => rawDb.inc(this.collection, this.id, field, d)));
  }
  /** Deletes the document; true if it existed. */
  remove() {
    return dbCall(() => rawDb.delete(this.collection, this.id));
  }
}

/** A query: `collection.where({ status: "paid" }).limit(10).get()`. */
class Query {
  constructor(collection, filters, limit) {
    this.collection = collection;
    this.filters = filters;
    this.max = limit;
  }
  /** Adds equality filters on top-level fields (all must match). */
  where(fields) {
    const more = Object.entries(fields).map(([k, v]) => [k, jsonText(v, `filter ${k}`)]);
    return new Query(this.collection, [...this.filters, ...more], this.max);
  }
  /** At most `n` documents (host cap 1000). */
  limit(n) {
    return new Query(this.collection, this.filters, n);
  }
  /** `[{ _id, ...fields }]`, like vk-uni-pay's `res.data`. */
  get() {
    const docs = dbCall(() => rawDb.query(this.collection, this.filters, this.max));
    return docs.map((d) => ({ _id: d.id, ...JSON.parse(d.data) }));
  }
}

/** A collection granted in the manifest: `db.collection("users")`. */
class Collection extends Query {
  constructor(name) {
    super(name, [], 100);
    this.name = name;
  }
  /** The document `id`. */
  doc(id) {
    return new Doc(this.name, id);
  }
  /** Creates a document with a new random id; returns the id. */
  add(data) {
    return dbCall(() => rawDb.insert(this.name, undefined, jsonText(data, 'document')));
  }
  /** Creates the document `id`; throws `db-conflict` if it exists. */
  insert(id, data) {
    dbCall(() => rawDb.insert(this.name, String(id), jsonText(data, 'document')));
  }
}

/** The JSON document store, scoped to the collections in the manifest. */
export const db = {
  collection: (name) => new Collection(name),
  command: _,
};

function logAt(level) {
  return (message, fields = {}) =>
    rawLog(
      level,
      String(message),
      Object.entries(fields).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]),
    );
}

/** Structured logging; the host tags every line with plugin, version and order. */
export const log = {
  trace: logAt('trace'),
  debug: logAt('debug'),
  info: logAt('info'),
  warn: logAt('warn'),
  error: logAt('error'),
};

/** The transactional outbox: a task exists only if the payment commits. */
export const tasks = {
  /** Queues `runTask` with this name and JSON payload after `delaySecs`; returns its id. */
  enqueue(name, payload = {}, delaySecs = 0) {
    const text = jsonText(payload, `task ${name} payload`);
    try {
      return Number(rawEnqueue(name, text, delaySecs));
    } catch (e) {
      throw new HandlerError('task-enqueue', `task ${name}: ${payloadOf(e)}`);
    }
  },
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (data) => (typeof data === 'string' ? encoder.encode(data) : Uint8Array.from(data));

function cryptoCall(f) {
  try {
    return f();
  } catch (e) {
    const p = payloadOf(e);
    if (p && typeof p === 'object' && p.tag === 'no-key') {
      throw new HandlerError('crypto-no-key', 'the merchant account has no notify_key');
    }
    // The world has no `denied` case for crypto: the host reports a missing `crypto = true`
    // as `invalid` text starting `denied: `.
    if (p && typeof p === 'object' && p.tag === 'invalid' && String(p.val).startsWith('denied: ')) {
      throw new HandlerError('crypto-denied', p.val);
    }
    if (p && typeof p === 'object' && p.tag === 'invalid') {
      throw new HandlerError('crypto-invalid', `invalid: ${p.val}`);
    }
    throw e;
  }
}

/** Lowercase hex of bytes. */
export function toHex(data) {
  return Array.from(data, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Cryptography keyed by the merchant account's notify key (vk-uni-pay's `vkPay.crypto.aes`).
 * `aesEncrypt`, `aesDecrypt` and `sign` need `crypto = true` in the manifest (else they throw
 * `crypto-denied`); `hmacSha256` and `sha256` need no grant.
 */
export const crypto = {
  /** AES-256-CBC of a string or bytes; base64 of iv || ciphertext. */
  aesEncrypt: (data) => cryptoCall(() => rawCrypto.aesEncrypt(bytes(data))),
  /** `aesEncrypt` of the value's JSON. */
  aesEncryptJson: (value) => crypto.aesEncrypt(jsonText(value, 'value')),
  /** The plaintext bytes. */
  aesDecrypt: (b64) => cryptoCall(() => rawCrypto.aesDecrypt(b64)),
  /** The plaintext as UTF-8 text. */
  aesDecryptText: (b64) => decoder.decode(crypto.aesDecrypt(b64)),
  /** The plaintext parsed as JSON. */
  aesDecryptJson: (b64) => JSON.parse(crypto.aesDecryptText(b64)),
  /** HMAC-SHA256 keyed by the notify key, lowercase hex. */
  sign: (data) => cryptoCall(() => rawCrypto.sign(bytes(data))),
  /** HMAC-SHA256 with an explicit key (bytes). */
  hmacSha256: (key, data) => rawCrypto.hmacSha256(bytes(key), bytes(data)),
  /** SHA-256 (bytes). */
  sha256: (data) => rawCrypto.sha256(bytes(data)),
};

/**
 * Outbound HTTP to the origins allowed in the manifest (`http_origins`), from `runTask`.
 *
 * In `handlePaid` every request throws `http-denied`: it runs inside the payment's
 * transaction, so a call there is not rolled back with it, may be made more than once for one
 * payment (a failed batch is retried one payment at a time, running the handlers that had
 * succeeded again) and holds the payment's locks while it waits. Enqueue a task
 * (`tasks.enqueue`) and make the call from `runTask`. A manifest may opt in with
 * `http_in_payment = true` (vk-uni-pay's "方式三"): idempotent calls only, expecting each to run
 * more than once and to hold the payment's locks while it waits.
 */
export const http = {
  /**
   * `{ method = "GET", url, headers = {}, body, json, timeoutMs }` -> `{ status, headers, body,
   * text(), json() }`. `json` sends a JSON body with its content type. Throws `http-<kind>`.
   */
  request({ method = 'GET', url, headers = {}, body, json, timeoutMs } = {}) {
    const h = Object.entries(headers).map(([k, v]) => [k, String(v)]);
    let payload = body === undefined ? new Uint8Array() : bytes(body);
    if (json !== undefined) {
      payload = encoder.encode(jsonText(json, 'request body'));
      if (!h.some(([k]) => k.toLowerCase() === 'content-type')) {
        h.push(['content-type', 'application/json']);
      }
    }
    let res;
    try {
      res = rawSend({ method, url, headers: h, body: payload, timeoutMs });
    } catch (e) {
      const p = payloadOf(e);
      const tag = p && typeof p === 'object' ? p.tag : 'transport';
      throw new HandlerError(`http-${tag}`, `${url}: ${tag}${p && p.val ? `: ${p.val}` : ''}`);
    }
    const text = () => decoder.decode(res.body);
    return {
      status: res.status,
      headers: Object.fromEntries(res.headers.map(([k, v]) => [k.toLowerCase(), v])),
      body: res.body,
      text,
      json: () => JSON.parse(text()),
    };
  },
};

/** Settings from the `[config]` table of the handler's manifest. */
export const config = {
  /** The value, or undefined. */
  get: (key) => rawConfigGet(key),
  /** The value; throws `missing-config` if the manifest does not set it. */
  require(key) {
    const v = rawConfigGet(key);
    if (v === undefined) {
      throw new HandlerError('missing-config', `the manifest's [config] has no \`${key}\``);
    }
    return v;
  },
};

function snippet(text) {
  return text.length > 80 ? `${JSON.stringify(text.slice(0, 80))}...` : JSON.stringify(text);
}

// The order as vk-uni-pay's `data`: snake_case fields, `total_fee` a number, `custom` parsed.
function orderFrom(o) {
  const order = {
    out_trade_no: o.outTradeNo,
    type: o.type,
    provider: o.provider,
    account: o.account,
    total_fee: Number(o.totalFee),
    user_id: o.userId,
    transaction_id: o.transactionId,
    custom_text: o.custom,
  };
  let parsed;
  Object.defineProperty(order, 'custom', {
    enumerable: true,
    get() {
      if (parsed === undefined) {
        let v;
        try {
          v = JSON.parse(o.custom);
        } catch (e) {
          throw new HandlerError(
            'invalid-custom',
            `order ${o.outTradeNo}: custom ${snippet(o.custom)} is not JSON: ${e.message}`,
          );
        }
        if (v === null || typeof v !== 'object' || Array.isArray(v)) {
          throw new HandlerError(
            'invalid-custom',
            `order ${o.outTradeNo}: custom ${snippet(o.custom)} is not a JSON object`,
          );
        }
        parsed = v;
      }
      return parsed;
    },
  });
  return order;
}

function notificationFrom(n) {
  return {
    id: Number(n.id),
    provider: n.provider,
    account: n.account,
    out_trade_no: n.outTradeNo,
    transaction_id: n.transactionId,
    amount: Number(n.amount),
    paid_at: n.paidAt ?? null,
    fields: Object.fromEntries(n.fields),
  };
}

function taskFrom(t) {
  const task = {
    id: Number(t.id),
    name: t.name,
    attempt: t.attempt,
    out_trade_no: t.outTradeNo ?? null,
    payload_text: t.payload,
  };
  Object.defineProperty(task, 'payload', {
    enumerable: true,
    get() {
      try {
        return JSON.parse(t.payload);
      } catch (e) {
        throw new HandlerError('invalid-payload', `task ${t.name}: payload is not JSON: ${e.message}`);
      }
    },
  });
  return task;
}

// Any thrown value as the WIT `error` record. Unexpected exceptions keep their message
// (and the first stack lines) so the host's log says what went wrong.
function witError(e) {
  if (e instanceof HandlerError) {
    return { code: e.code, message: e.message };
  }
  if (e instanceof Error) {
    const where = (e.stack ?? '').split('\n').slice(0, 3).join(' | ');
    return { code: 'js-exception', message: `${e.name}: ${e.message}${where ? ` at ${where}` : ''}` };
  }
  return { code: 'js-exception', message: `threw ${String(e)}` };
}

function outcomeText(value) {
  return value === undefined || value === null ? '' : jsonText(value, 'the handler result');
}

/**
 * The component's exports for a handler module (`build.mjs` calls this in the generated
 * entry): `name` is the order type, `version` the handler's own version.
 */
export function exportHandler(mod, { name, version }) {
  return {
    metadata: () => ({ name, version, worldVersion: WORLD_VERSION }),
    async handlePaid(order, notification) {
      try {
        if (typeof mod.handlePaid !== 'function') {
          throw new HandlerError('not-implemented', `${name} exports no handlePaid`);
        }
        return { result: outcomeText(await mod.handlePaid(orderFrom(order), notificationFrom(notification))) };
      } catch (e) {
        throw witError(e);
      }
    },
    async runTask(task) {
      try {
        if (typeof mod.runTask !== 'function') {
          throw new HandlerError('unknown-task', `unknown task ${task.name}`);
        }
        await mod.runTask(taskFrom(task));
      } catch (e) {
        throw witError(e);
      }
    },
  };
}
