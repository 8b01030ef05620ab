// Scenarios for pgjdbc through the optimist proxy, run by tests/integration/test_driver_jdbc.py.
//
//   javac -cp postgresql.jar -d OUT DriverScenarios.java
//   java -cp postgresql.jar:OUT DriverScenarios SCENARIO JDBC_URL TARGET
//
// TARGET is "proxy" or "direct": the parts that need the proxy (conflicts) run only for "proxy",
// everything else runs for both so that the test can compare the two outputs.
// Output: one JSON object per line, each with a unique "step"; a scenario that ends normally
// prints {"step": "done"} last. Values are strings as ResultSet.getString gives them (so the
// comparison is exact and independent of the transfer format), or numbers / lists / null.

import java.sql.*;
import java.util.*;

import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class DriverScenarios {

    // ------------------------------------------------------------------ JSON out

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof String) return quote((String) v);
        if (v instanceof Number || v instanceof Boolean) return v.toString();
        if (v instanceof int[]) {
            List<Object> l = new ArrayList<>();
            for (int x : (int[]) v) l.add(x);
            return json(l);
        }
        if (v instanceof long[]) {
            List<Object> l = new ArrayList<>();
            for (long x : (long[]) v) l.add(x);
            return json(l);
        }
        if (v instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) b.append(", ");
                first = false;
                b.append(quote(String.valueOf(e.getKey()))).append(": ").append(json(e.getValue()));
            }
            return b.append("}").toString();
        }
        if (v instanceof Collection) {
            StringBuilder b = new StringBuilder("[");
            boolean first = true;
            for (Object o : (Collection<?>) v) {
                if (!first) b.append(", ");
                first = false;
                b.append(json(o));
            }
            return b.append("]").toString();
        }
        return quote(v.toString());
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static final Set<String> steps = new HashSet<>();

    static void emit(String step, Object... kv) {
        if (!steps.add(step)) throw new IllegalStateException("duplicate step " + step);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("step", step);
        for (int i = 0; i + 1 < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        System.out.println(json(m));
        System.out.flush();
    }

    // ------------------------------------------------------------------ helpers

    static String url;
    static boolean viaProxy;

    static Connection connect(String extra) throws SQLException {
        String u = url;
        if (extra != null && !extra.isEmpty()) u += (u.contains("?") ? "&" : "?") + extra;
        return DriverManager.getConnection(u);
    }

    /** All rows of a result set as ordered maps label -> getString. */
    static List<Map<String, Object>> rows(ResultSet rs) throws SQLException {
        List<Map<String, Object>> out = new ArrayList<>();
        ResultSetMetaData md = rs.getMetaData();
        while (rs.next()) {
            Map<String, Object> row = new LinkedHashMap<>();
            for (int i = 1; i <= md.getColumnCount(); i++) row.put(md.getColumnLabel(i), rs.getString(i));
            out.add(row);
        }
        rs.close();
        return out;
    }

    static List<String> labels(ResultSetMetaData md) throws SQLException {
        List<String> out = new ArrayList<>();
        if (md == null) return null;
        for (int i = 1; i <= md.getColumnCount(); i++) out.add(md.getColumnLabel(i));
        return out;
    }

    static List<String> typeNames(ResultSetMetaData md) throws SQLException {
        List<String> out = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) out.add(md.getColumnTypeName(i));
        return out;
    }

    static List<Map<String, Object>> query(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            return rows(st.executeQuery(sql));
        }
    }

    static List<Map<String, Object>> query(PreparedStatement ps, Object... params) throws SQLException {
        bind(ps, params);
        return rows(ps.executeQuery());
    }

    static int update(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            return st.executeUpdate(sql);
        }
    }

    static void bind(PreparedStatement ps, Object... params) throws SQLException {
        for (int i = 0; i < params.length; i++) {
            Object p = params[i];
            if (p instanceof Integer) ps.setInt(i + 1, (Integer) p);
            else if (p instanceof java.math.BigDecimal) ps.setBigDecimal(i + 1, (java.math.BigDecimal) p);
            else ps.setString(i + 1, (String) p);
        }
    }

    static java.math.BigDecimal dec(String s) {
        return new java.math.BigDecimal(s);
    }

    /** The error as data: SQLState, message, the server's DETAIL, and for batches the update
     *  counts and the chained exception. */
    static Map<String, Object> err(SQLException e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("class", e.getClass().getSimpleName());
        m.put("sqlstate", e.getSQLState());
        m.put("message", e.getMessage());
        if (e instanceof PSQLException) {
            ServerErrorMessage sem = ((PSQLException) e).getServerErrorMessage();
            if (sem != null) {
                m.put("detail", sem.getDetail());
                m.put("hint", sem.getHint());
                m.put("server_message", sem.getMessage());
            }
        }
        if (e instanceof BatchUpdateException) {
            m.put("update_counts", ((BatchUpdateException) e).getUpdateCounts());
        }
        SQLException next = e.getNextException();
        if (next != null && next != e) m.put("next", err(next));
        return m;
    }

    interface Body {
        Object run() throws SQLException;
    }

    /** Runs body and emits either {"result": ...} or {"error": ...}. */
    static void attempt(String step, Body body) {
        try {
            Object r = body.run();
            emit(step, "ok", true, "result", r);
        } catch (SQLException e) {
            emit(step, "ok", false, "error", err(e));
        }
    }

    static List<Map<String, Object>> accounts() throws SQLException {
        // read on a fresh direct-or-proxy connection of its own: what the table holds now
        try (Connection c = connect("")) {
            return query(c, "SELECT id, owner, balance, version FROM accounts ORDER BY id");
        }
    }

    // ------------------------------------------------------------------ scenarios

    /** One session, no conflicts: plain statements and PreparedStatements executed more often
     *  than prepareThreshold, so that pgjdbc switches to named server-side statements. */
    static void sequence() throws SQLException {
        try (Connection c = connect("")) {
            emit("select_all", "rows", query(c, "SELECT * FROM accounts ORDER BY id"));
            emit("stmt_update", "count", update(c, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"));
            PreparedStatement sel = c.prepareStatement("SELECT * FROM accounts WHERE id = ?");
            PreparedStatement upd = c.prepareStatement("UPDATE accounts SET balance = ?, owner = ? WHERE id = ?");
            for (int i = 1; i <= 8; i++) {
                List<Map<String, Object>> r = query(sel, 1);
                bind(upd, dec(200 + i + ".50"), "o" + i, 1);
                int n = upd.executeUpdate();
                emit("loop_read_write_" + i, "read", r, "count", n);
            }
            // writes without reading again in between: the proxy must learn each new version
            query(sel, 2);
            for (int i = 1; i <= 8; i++) {
                bind(upd, dec("300." + i), "p" + i, 2);
                emit("loop_write_" + i, "count", upd.executeUpdate());
            }
            // the same SQL text prepared again (pgjdbc's statement cache hands back the server
            // statement) and written with plain statements interleaved
            for (int i = 1; i <= 6; i++) {
                PreparedStatement again = c.prepareStatement("UPDATE accounts SET balance = ?, owner = ? WHERE id = ?");
                bind(again, dec("400." + i), "q" + i, 2);
                int n = again.executeUpdate();
                again.close();
                int m = update(c, "UPDATE accounts SET owner = owner || '!' WHERE id = 2");
                emit("loop_reprepare_" + i, "count", n, "plain_count", m);
            }
            query(sel, 3);
            PreparedStatement del = c.prepareStatement("DELETE FROM accounts WHERE id = ?");
            bind(del, 3);
            emit("delete", "count", del.executeUpdate());
            bind(del, 3);
            emit("delete_again", "count", del.executeUpdate());
            PreparedStatement ins = c.prepareStatement("INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)");
            bind(ins, 4, "new", dec("1.00"));
            emit("insert", "count", ins.executeUpdate());
            for (int i = 1; i <= 6; i++) {
                bind(upd, dec(i + ".25"), "n" + i, 4);
                emit("loop_inserted_" + i, "count", upd.executeUpdate());
            }
            PreparedStatement ret = c.prepareStatement(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING id, balance");
            for (int i = 1; i <= 6; i++) {
                bind(ret, dec("1.00"), 1);
                ResultSet rs = ret.executeQuery();
                int cols = rs.getMetaData().getColumnCount();
                emit("loop_returning_" + i, "columns", cols, "rows", rows(rs));
            }
            for (int i = 1; i <= 6; i++) {
                emit("loop_select_" + i, "rows", query(sel, 1));
            }
            emit("final_session", "rows", query(c, "SELECT * FROM accounts ORDER BY id"));
        }
        emit("final", "rows", accounts());
    }

    /** The smallest cases: the update count of a checked write, and a lost update between two
     *  sessions that read with Statement.executeQuery (an unnamed statement, Describe portal). */
    static void minimal() throws SQLException {
        try (Connection a = connect(""); Connection b = connect("")) {
            query(a, "SELECT * FROM accounts WHERE id = 1");
            attempt("checked_write_count", () -> update(a, "UPDATE accounts SET owner = 'a' WHERE id = 1"));
            attempt("unread_write_count", () -> update(a, "UPDATE accounts SET owner = 'a' WHERE id = 3"));
            attempt("bulk_write_count", () -> update(a, "UPDATE accounts SET owner = owner WHERE id > 100"));
            query(a, "SELECT * FROM accounts WHERE id = 2");
            query(b, "SELECT * FROM accounts WHERE id = 2");
            attempt("a_write", () -> update(a, "UPDATE accounts SET balance = 1 WHERE id = 2"));
            attempt("b_lost_update", () -> update(b, "UPDATE accounts SET balance = 2 WHERE id = 2"));
        }
        emit("final", "rows", accounts());
        emit("done");
    }

    /** A has read a row and written it often enough to use a named server-side statement; B
     *  changes the row; A's next execution of the same server statement must conflict, and
     *  after A re-reads through its (named, no RowDescription any more) SELECT it may write. */
    static void preparedConflict() throws SQLException {
        try (Connection a = connect(""); Connection b = connect("")) {
            PreparedStatement sel = a.prepareStatement("SELECT * FROM accounts WHERE id = ?");
            PreparedStatement upd = a.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?");
            for (int i = 1; i <= 7; i++) {
                query(sel, 1);
                bind(upd, dec(i + ".00"), 1);
                emit("warm_" + i, "count", upd.executeUpdate());
            }
            query(b, "SELECT * FROM accounts WHERE id = 1");
            emit("b_update", "count", update(b, "UPDATE accounts SET owner = 'b' WHERE id = 1"));
            attempt("a_conflict", () -> { bind(upd, dec("99.00"), 1); return upd.executeUpdate(); });
            emit("a_reread", "rows", query(sel, 1));
            attempt("a_after_reread", () -> { bind(upd, dec("100.00"), 1); return upd.executeUpdate(); });
            // B learned its own write, but A wrote since: B conflicts now
            attempt("b_conflict", () -> update(b, "UPDATE accounts SET owner = 'c' WHERE id = 1"));
            // a delete by B of a row A read: A's server-prepared update reports "deleted"
            query(sel, 2);
            bind(upd, dec("2.00"), 2);
            emit("a_write_2", "count", upd.executeUpdate());
            query(b, "SELECT * FROM accounts WHERE id = 2");
            emit("b_delete_2", "count", update(b, "DELETE FROM accounts WHERE id = 2"));
            attempt("a_deleted", () -> { bind(upd, dec("3.00"), 2); return upd.executeUpdate(); });
        }
        emit("final", "rows", accounts());
        emit("done");
    }

    /** Two sessions, autocommit and then a transaction of B. */
    static void conflict() throws SQLException {
        try (Connection a = connect(""); Connection b = connect("")) {
            query(a, "SELECT * FROM accounts WHERE id = 1");
            query(b, "SELECT * FROM accounts WHERE id = 1");
            emit("a_update_1", "count", update(a, "UPDATE accounts SET balance = 150 WHERE id = 1"));
            attempt("b_statement_conflict", () -> update(b, "UPDATE accounts SET balance = 50 WHERE id = 1"));

            query(a, "SELECT * FROM accounts WHERE id = 2");
            query(b, "SELECT * FROM accounts WHERE id = 2");
            emit("a_update_2", "count", update(a, "UPDATE accounts SET balance = 250 WHERE id = 2"));
            PreparedStatement bu = b.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?");
            attempt("b_prepared_conflict", () -> { bind(bu, dec("50"), 2); return bu.executeUpdate(); });
            PreparedStatement bd = b.prepareStatement("DELETE FROM accounts WHERE id = ?");
            attempt("b_prepared_delete_conflict", () -> { bind(bd, 2); return bd.executeUpdate(); });

            // a transaction of B is aborted by the conflict, as by any server error
            b.setAutoCommit(false);
            query(b, "SELECT * FROM accounts WHERE id IN (1, 3)");
            emit("b_tx_other_write", "count", update(b, "UPDATE accounts SET owner = 'b-in-tx' WHERE id = 1"));
            query(a, "SELECT * FROM accounts WHERE id = 3");
            emit("a_update_3", "count", update(a, "UPDATE accounts SET balance = 350 WHERE id = 3"));
            attempt("b_tx_conflict", () -> { bind(bu, dec("30"), 3); return bu.executeUpdate(); });
            attempt("b_tx_after_conflict", () -> query(b, "SELECT 1 AS one"));
            attempt("b_tx_after_conflict_again", () -> update(b, "UPDATE accounts SET owner = 'x' WHERE id = 2"));
            b.rollback();
            attempt("b_after_rollback", () -> query(b, "SELECT 1 AS one"));
            query(b, "SELECT * FROM accounts WHERE id = 3");
            attempt("b_tx_retry", () -> { bind(bu, dec("31"), 3); return bu.executeUpdate(); });
            b.commit();
            b.setAutoCommit(true);
        }
        emit("final", "rows", accounts());
        emit("done");
    }

    static int[] insertBatch(Connection c, int firstId, int n) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)")) {
            for (int i = 0; i < n; i++) {
                bind(ps, firstId + i, "batch" + (firstId + i), dec((firstId + i) + ".00"));
                ps.addBatch();
            }
            return ps.executeBatch();
        }
    }

    static int[] updateBatch(Connection c, String balance, int... ids) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?")) {
            for (int id : ids) {
                bind(ps, dec(balance), id);
                ps.addBatch();
            }
            return ps.executeBatch();
        }
    }

    /** Batches without conflicts (compared with a direct run): update counts must be exact. */
    static void batchOk() throws SQLException {
        try (Connection c = connect("")) {
            query(c, "SELECT * FROM accounts");
            emit("insert_batch", "counts", insertBatch(c, 10, 5));
            emit("update_batch", "counts", updateBatch(c, "7.00", 1, 2, 3, 10, 11, 999));
            emit("update_batch_again", "counts", updateBatch(c, "8.00", 1, 2, 3, 10, 11));
            // larger than pgjdbc's internal chunks, exercising many Bind/Execute per Sync
            emit("insert_batch_big", "counts", insertBatch(c, 100, 300));
            c.setAutoCommit(false);
            query(c, "SELECT * FROM accounts WHERE id IN (1, 2)");
            try (Statement st = c.createStatement()) {
                st.addBatch("UPDATE accounts SET owner = 's' WHERE id = 1");
                st.addBatch("INSERT INTO accounts (id, owner, balance) VALUES (20, 'x', 1)");
                st.addBatch("UPDATE accounts SET owner = 't' WHERE id = 2");
                st.addBatch("DELETE FROM accounts WHERE id = 20");
                st.addBatch("UPDATE accounts SET owner = 'none' WHERE id = 12345");
                emit("statement_batch", "counts", st.executeBatch());
            }
            emit("update_batch_tx", "counts", updateBatch(c, "9.00", 1, 2, 3));
            c.commit();
            c.setAutoCommit(true);
            emit("final_session", "rows", query(c, "SELECT * FROM accounts WHERE id < 100 ORDER BY id"));
        }
        emit("done");
    }

    /** One row of B's batch conflicts. */
    static void batchConflict() throws SQLException {
        try (Connection a = connect(""); Connection b = connect("")) {
            // in a transaction: an INSERT batch then an UPDATE batch whose second row conflicts
            b.setAutoCommit(false);
            query(b, "SELECT * FROM accounts");
            query(a, "SELECT * FROM accounts WHERE id = 2");
            emit("a_update_2", "count", update(a, "UPDATE accounts SET owner = 'a' WHERE id = 2"));
            attempt("tx_insert_batch", () -> insertBatch(b, 30, 5));
            attempt("tx_update_batch", () -> updateBatch(b, "5.00", 1, 2, 3));
            attempt("tx_after_conflict", () -> query(b, "SELECT 1 AS one"));
            b.rollback();
            emit("after_rollback", "rows", accounts());
            // re-read, then the same batch goes through
            query(b, "SELECT * FROM accounts");
            attempt("tx_retry_update_batch", () -> updateBatch(b, "5.00", 1, 2, 3));
            b.commit();
            emit("after_retry", "rows", accounts());

            // a Statement batch (several SQL strings) with the conflict in the middle
            query(b, "SELECT * FROM accounts");
            query(a, "SELECT * FROM accounts WHERE id = 3");
            emit("a_update_3", "count", update(a, "UPDATE accounts SET owner = 'a3' WHERE id = 3"));
            attempt("tx_statement_batch", () -> {
                try (Statement st = b.createStatement()) {
                    st.addBatch("INSERT INTO accounts (id, owner, balance) VALUES (40, 'x', 1)");
                    st.addBatch("UPDATE accounts SET owner = 'b1' WHERE id = 1");
                    st.addBatch("UPDATE accounts SET owner = 'b3' WHERE id = 3");
                    st.addBatch("UPDATE accounts SET owner = 'b2' WHERE id = 2");
                    return st.executeBatch();
                }
            });
            b.rollback();
            emit("after_statement_batch_rollback", "rows", accounts());

            // autocommit: compare what a conflict leaves applied with what an ordinary error
            // (numeric overflow) in the same position leaves applied: they must be the same
            b.setAutoCommit(true);
            query(b, "SELECT * FROM accounts");
            query(a, "SELECT * FROM accounts WHERE id = 3");
            emit("a_update_3_again", "count", update(a, "UPDATE accounts SET owner = 'a33' WHERE id = 3"));
            attempt("autocommit_update_batch", () -> {
                try (PreparedStatement ps = b.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?")) {
                    bind(ps, dec("61.00"), 1); ps.addBatch();
                    bind(ps, dec("62.00"), 2); ps.addBatch();
                    bind(ps, dec("63.00"), 3); ps.addBatch();
                    bind(ps, dec("64.00"), 1); ps.addBatch();
                    return ps.executeBatch();
                }
            });
            emit("after_autocommit_conflict", "rows", accounts());
            query(b, "SELECT * FROM accounts");
            attempt("autocommit_update_batch_overflow", () -> {
                try (PreparedStatement ps = b.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?")) {
                    bind(ps, dec("71.00"), 1); ps.addBatch();
                    bind(ps, dec("72.00"), 2); ps.addBatch();
                    bind(ps, dec("1e20"), 3); ps.addBatch();
                    bind(ps, dec("74.00"), 1); ps.addBatch();
                    return ps.executeBatch();
                }
            });
            emit("after_autocommit_overflow", "rows", accounts());
        }
        emit("done");
    }

    static Map<String, Object> keys(Statement st) throws SQLException {
        ResultSet rs = st.getGeneratedKeys();
        ResultSetMetaData md = rs.getMetaData();
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("columns", md.getColumnCount());
        m.put("labels", labels(md));
        m.put("rows", rows(rs));
        return m;
    }

    /** getGeneratedKeys: pgjdbc appends RETURNING * (or RETURNING "col") to the statement. */
    static void generatedKeys() throws SQLException {
        String insert = "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)";
        try (Connection c = connect("")) {
            PreparedStatement all = c.prepareStatement(insert, Statement.RETURN_GENERATED_KEYS);
            for (int i = 0; i < 7; i++) {  // past prepareThreshold
                bind(all, 10 + i, "k" + i, dec("1.00"));
                int n = all.executeUpdate();
                emit("insert_all_" + i, "count", n, "keys", keys(all));
            }
            PreparedStatement one = c.prepareStatement(insert, new String[] {"id"});
            for (int i = 0; i < 7; i++) {
                bind(one, 20 + i, "j" + i, dec("2.00"));
                int n = one.executeUpdate();
                emit("insert_id_" + i, "count", n, "keys", keys(one));
            }
            PreparedStatement two = c.prepareStatement(insert, new String[] {"owner", "balance"});
            bind(two, 30, "two", dec("3.00"));
            emit("insert_owner_balance", "count", two.executeUpdate(), "keys", keys(two));
            try (Statement st = c.createStatement()) {
                int n = st.executeUpdate("INSERT INTO accounts (id, owner, balance) VALUES (7, 'g', 1)",
                        Statement.RETURN_GENERATED_KEYS);
                emit("statement_insert", "count", n, "keys", keys(st));
                n = st.executeUpdate("UPDATE accounts SET owner = 'g2' WHERE id = 7", new String[] {"owner"});
                emit("statement_update_owner", "count", n, "keys", keys(st));
            }
            query(c, "SELECT * FROM accounts WHERE id = 1");
            PreparedStatement upd = c.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?",
                    Statement.RETURN_GENERATED_KEYS);
            for (int i = 0; i < 7; i++) {
                bind(upd, dec(i + ".50"), 1);
                int n = upd.executeUpdate();
                emit("update_all_" + i, "count", n, "keys", keys(upd));
            }
            PreparedStatement batch = c.prepareStatement(insert, Statement.RETURN_GENERATED_KEYS);
            for (int i = 0; i < 3; i++) {
                bind(batch, 40 + i, "b" + i, dec("4.00"));
                batch.addBatch();
            }
            emit("insert_batch", "counts", batch.executeBatch(), "keys", keys(batch));
            // the session's own inserted rows: further writes are no false conflicts
            PreparedStatement w = c.prepareStatement("UPDATE accounts SET owner = ? WHERE id = ?");
            for (int id : new int[] {10, 20, 30, 7, 40}) {
                bind(w, "own", id);
                emit("own_write_" + id, "count", w.executeUpdate());
            }
            if (viaProxy) {
                // what the session learned from its INSERT is checked: another session's
                // change since makes the next write conflict
                try (Connection other = connect("")) {
                    query(other, "SELECT * FROM accounts WHERE id = 21");
                    emit("other_update_21", "count", update(other, "UPDATE accounts SET owner = 'other' WHERE id = 21"));
                }
                attempt("conflict_21", () -> { bind(w, "mine", 21); return w.executeUpdate(); });
            }
        }
        emit("final", "rows", accounts());
        emit("done");
    }

    static Map<String, Object> describe(ResultSetMetaData md) throws SQLException {
        Map<String, Object> m = new LinkedHashMap<>();
        if (md == null) {
            m.put("columns", null);
            return m;
        }
        m.put("columns", md.getColumnCount());
        m.put("labels", labels(md));
        m.put("types", typeNames(md));
        List<Object> tables = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) tables.add(md.getTableName(i));
        m.put("tables", tables);
        return m;
    }

    /** ResultSetMetaData / ParameterMetaData of UPDATE ... RETURNING, and DatabaseMetaData. */
    static void metadata() throws SQLException {
        try (Connection c = connect("")) {
            query(c, "SELECT * FROM accounts");
            String sql = "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING id, balance";
            PreparedStatement ps = c.prepareStatement(sql);
            // before any execution: pgjdbc describes the statement (Parse/Describe/Sync)
            emit("prepared_metadata_before", "meta", describe(ps.getMetaData()),
                    "params", ps.getParameterMetaData().getParameterCount());
            for (int i = 1; i <= 6; i++) {
                bind(ps, dec("1.00"), i % 3 + 1);
                ResultSet rs = ps.executeQuery();
                Map<String, Object> meta = describe(rs.getMetaData());
                emit("returning_" + i, "meta", meta, "rows", rows(rs));
            }
            emit("prepared_metadata_after", "meta", describe(ps.getMetaData()),
                    "params", ps.getParameterMetaData().getParameterCount());
            try (Statement st = c.createStatement()) {
                ResultSet rs = st.executeQuery("UPDATE accounts SET owner = 'm' WHERE id = 1 RETURNING *");
                emit("statement_returning_star", "meta", describe(rs.getMetaData()), "rows", rows(rs));
                rs = st.executeQuery("UPDATE accounts SET owner = 'n' WHERE id = 1 RETURNING balance");
                emit("statement_returning_balance", "meta", describe(rs.getMetaData()), "rows", rows(rs));
                rs = st.executeQuery("UPDATE accounts SET owner = 'o' WHERE id = 1 RETURNING owner AS who, balance * 2 AS twice");
                emit("statement_returning_expr", "meta", describe(rs.getMetaData()), "rows", rows(rs));
                rs = st.executeQuery("DELETE FROM accounts WHERE id = 3 RETURNING id");
                emit("statement_delete_returning", "meta", describe(rs.getMetaData()), "rows", rows(rs));
                // execute() + getResultSet() + getUpdateCount()
                boolean isRs = st.execute("UPDATE accounts SET owner = 'p' WHERE id = 2 RETURNING owner");
                Map<String, Object> meta = isRs ? describe(st.getResultSet().getMetaData()) : null;
                List<Map<String, Object>> r = isRs ? rows(st.getResultSet()) : null;
                emit("statement_execute_returning", "is_result_set", isRs, "meta", meta, "rows", r);
                isRs = st.execute("UPDATE accounts SET owner = 'q' WHERE id = 2");
                emit("statement_execute_plain", "is_result_set", isRs, "update_count", st.getUpdateCount());
            }
            PreparedStatement plain = c.prepareStatement("UPDATE accounts SET owner = ? WHERE id = ?");
            emit("prepared_plain_metadata", "meta", describe(plain.getMetaData()),
                    "params", plain.getParameterMetaData().getParameterCount());

            DatabaseMetaData dm = c.getMetaData();
            List<Object> cols = new ArrayList<>();
            try (ResultSet rs = dm.getColumns(null, "public", "accounts", null)) {
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            List<Object> pk = new ArrayList<>();
            try (ResultSet rs = dm.getPrimaryKeys(null, "public", "accounts")) {
                while (rs.next()) pk.add(rs.getString("COLUMN_NAME"));
            }
            List<Object> tables = new ArrayList<>();
            try (ResultSet rs = dm.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            emit("database_metadata", "columns", cols, "primary_key", pk, "tables", tables,
                    "product", dm.getDatabaseProductName());
        }
        emit("final", "rows", accounts());
        emit("done");
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: DriverScenarios SCENARIO JDBC_URL proxy|direct");
            System.exit(2);
        }
        url = args[1];
        viaProxy = args[2].equals("proxy");
        DriverManager.setLoginTimeout(20);
        switch (args[0]) {
            case "sequence": sequence(); emit("done"); break;
            case "minimal": minimal(); break;
            case "prepared_conflict": preparedConflict(); break;
            case "conflict": conflict(); break;
            case "batch_ok": batchOk(); break;
            case "batch_conflict": batchConflict(); break;
            case "generated_keys": generatedKeys(); break;
            case "metadata": metadata(); break;
            default:
                System.err.println("unknown scenario " + args[0]);
                System.exit(2);
        }
    }
}
