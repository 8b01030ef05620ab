// node-postgres scenarios through the optimist proxy, run by tests/integration/test_driver_node.py.
//
//   node scenarios.js SCENARIO MODE CONNECTION_URL
//
// SCENARIO: modified, deleted, transaction, own_writes, returning (see below).
// MODE picks how every statement is sent:
//   simple    client.query(text)                      -> the simple query protocol (Query)
//   extended  client.query(text, values)              -> Parse/Bind/Describe/Execute/Sync, unnamed
//   named     client.query({name, text, values})      -> a named prepared statement, parsed once
// Output: one JSON object per line, each with a unique "step"; {"step": "done"} last.
'use strict';

const { Client } = require('pg');

const [scenario, mode, url] = process.argv.slice(2);
if (!['simple', 'extended', 'named'].includes(mode) || !url) {
  console.error('usage: node scenarios.js SCENARIO simple|extended|named URL');
  process.exit(2);
}

const seen = new Set();
function emit(step, fields) {
  if (seen.has(step)) throw new Error(`duplicate step ${step}`);
  seen.add(step);
  process.stdout.write(JSON.stringify({ step, ...fields }) + '\n');
}

// A statement in the chosen mode: text uses $1..$n; in simple mode the values are inlined as
// literals (integers and quoted strings only, which is all the scenarios use).
function statement(name, text, values) {
  if (mode === 'simple') {
    const inlined = text.replace(/\$(\d+)/g, (_, i) => {
      const v = values[Number(i) - 1];
      return typeof v === 'number' ? String(v) : `'${String(v).replace(/'/g, "''")}'`;
    });
    return [inlined];
  }
  if (mode === 'extended') return [text, values];
  return [{ name, text, values }];
}

async function run(client, step, name, text, values) {
  try {
    const res = await client.query(...statement(name, text, values));
    const out = {
      ok: true,
      command: res.command,
      rowCount: res.rowCount,
      fields: res.fields.map((f) => f.name),
      rows: res.rows,
    };
    if (step) emit(step, out);
    return out;
  } catch (err) {
    const out = {
      ok: false,
      error: { code: err.code, message: err.message, detail: err.detail, hint: err.hint,
               severity: err.severity },
    };
    if (step) emit(step, out);
    return out;
  }
}

const READ = 'SELECT * FROM accounts WHERE id = $1';
const SET_BALANCE = 'UPDATE accounts SET balance = $1 WHERE id = $2';
const SET_OWNER = 'UPDATE accounts SET owner = $1 WHERE id = $2';
const DELETE = 'DELETE FROM accounts WHERE id = $1';

const read = (c, step, id) => run(c, step, 'read', READ, [id]);
const setBalance = (c, step, balance, id) => run(c, step, 'set_balance', SET_BALANCE, [balance, id]);
const setOwner = (c, step, owner, id) => run(c, step, 'set_owner', SET_OWNER, [owner, id]);
const remove = (c, step, id) => run(c, step, 'delete', DELETE, [id]);

async function connect() {
  const client = new Client({
    connectionString: url,
    connectionTimeoutMillis: 10000,
    query_timeout: 30000,
    application_name: `node-${mode}`,
  });
  await client.connect();
  return client;
}

const SCENARIOS = {
  // both read row 1, a writes, b's write conflicts (kind "modified")
  async modified(a, b) {
    await read(a, null, 1);
    await read(b, 'b_read', 1);
    await setBalance(a, 'a_write', 150, 1);
    await setBalance(b, 'b_conflict', 50, 1);
    // re-read, then the retry goes through
    await read(b, null, 1);
    await setBalance(b, 'b_retry', 51, 1);
  },

  // b read row 2, a deletes it: b's write (and b's delete) report "deleted"
  async deleted(a, b) {
    await read(b, null, 2);
    await read(a, null, 2);
    await remove(a, 'a_delete', 2);
    await setOwner(b, 'b_update_conflict', 'X', 2);
    await remove(b, 'b_delete_conflict', 2);
  },

  // a conflict inside a transaction aborts it: 25P02 until ROLLBACK, nothing of it applied
  async transaction(a, b) {
    await b.query('BEGIN');
    await read(b, null, 3);
    await read(b, null, 1);
    await setOwner(b, 'b_tx_first_write', 'b-in-tx', 1);
    await read(a, null, 3);
    await setBalance(a, 'a_write', 350, 3);
    await setBalance(b, 'b_tx_conflict', 30, 3);
    await run(b, 'b_tx_after_conflict', 'one', 'SELECT $1::int AS one', [1]);
    await b.query('ROLLBACK');
    await run(b, 'b_after_rollback', 'one', 'SELECT $1::int AS one', [1]);
    await read(b, null, 3);
    await setBalance(b, 'b_retry', 31, 3);
  },

  // no false conflict: the same session writes the same row again and again, with and without
  // reading it in between, also inside a transaction; another session that read before all of
  // this still conflicts
  async own_writes(a, b) {
    await read(b, null, 1);
    await read(a, null, 1);
    for (let i = 1; i <= 4; i++) await setBalance(a, `a_again_${i}`, 150 + i, 1);
    await read(a, null, 1);
    await setOwner(a, 'a_again_owner', 'Zoe', 1);
    await a.query('BEGIN');
    await setBalance(a, 'a_tx_again_1', 161, 1);
    await setBalance(a, 'a_tx_again_2', 162, 1);
    await a.query('COMMIT');
    await run(a, 'a_insert', 'ins', 'INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3)', [7, 'new', 7]);
    await setOwner(a, 'a_write_inserted_1', 'own', 7);
    await setOwner(a, 'a_write_inserted_2', 'own2', 7);
    await setOwner(b, 'b_conflict', 'late', 1);
    // after another session's change, re-reading is enough for a to write again (a knows
    // row 2 from its own earlier write: the re-read must replace that knowledge)
    await read(a, null, 2);
    await setOwner(a, 'a_write_2', 'a0', 2);
    await read(b, null, 2);
    await setOwner(b, 'b_write_2', 'b', 2);
    await read(a, null, 2);
    await setOwner(a, 'a_write_2_after_reread', 'a', 2);
  },

  // RETURNING as the client wrote it: the proxy's own additions are not visible
  async returning(a) {
    await read(a, null, 1);
    await run(a, 'returning_two', 'ret', 'UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING id, balance',
              [1, 1]);
    await run(a, 'returning_star', 'ret_star', 'UPDATE accounts SET owner = $1 WHERE id = $2 RETURNING *', ['Zed', 1]);
    await run(a, 'returning_expr', 'ret_expr',
              'UPDATE accounts SET owner = $1 WHERE id = $2 RETURNING owner AS who, balance * 2 AS twice', ['Zoe', 1]);
    await run(a, 'insert_returning', 'ins_ret',
              'INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3) RETURNING id', [8, 'ret', 8]);
    await run(a, 'delete_returning', 'del_ret', 'DELETE FROM accounts WHERE id = $1 RETURNING owner', [8]);
    await read(a, 'read_1', 1);
  },
};

async function main() {
  const body = SCENARIOS[scenario];
  if (!body) throw new Error(`unknown scenario ${scenario}`);
  const a = await connect();
  const b = await connect();
  try {
    await body(a, b);
  } finally {
    await a.end().catch(() => {});
    await b.end().catch(() => {});
  }
  const check = await connect();
  try {
    const res = await check.query('SELECT id, owner, balance, version FROM accounts ORDER BY id');
    emit('final', { rows: res.rows });
  } finally {
    await check.end().catch(() => {});
  }
  emit('done', {});
}

const timer = setTimeout(() => {
  console.error('scenarios.js: timed out');
  process.exit(3);
}, 60000);
main().then(
  () => clearTimeout(timer),
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  },
);
