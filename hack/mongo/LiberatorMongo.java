import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.backend.aggregation.stage.AggregationStage;
import de.bwaldvogel.mongo.oplog.Oplog;
import io.netty.channel.Channel;

/**
 * Starts mongo-java-server with its oplog enabled (so change streams work) on a given host and
 * port. The library's own main classes bind 27017 and leave the oplog off, hence this launcher.
 *
 * <p>Usage: {@code java LiberatorMongo HOST PORT memory|h2:FILE}
 *
 * <p>These shims make current pymongo (4.x) work against the emulator as it works against
 * MongoDB; all are documented in docs/local-stack.md (MongoDB section):
 * <ul>
 *   <li>it reports MongoDB 5.0 with wire version 13 (the library's own 5.0 says wire version 8,
 *       which pymongo refuses: it needs 9 or more);</li>
 *   <li>an {@code aggregate} reply carries {@code operationTime}, as a replica set's does. pymongo
 *       requires it when a change stream opens with an empty first batch and no resume token.</li>
 *   <li>change events of updates are repaired (see {@link ChangeEvents}): the library puts the
 *       update operators in {@code documentKey}, reports a replacement as an update, and falls
 *       back to the update's {@code $set} fields when {@code updateLookup} finds no document.</li>
 *   <li>{@code findAndModify} (pymongo's {@code find_one_and_*}) writes oplog entries: the library
 *       writes none, so those changes would never reach a change stream.</li>
 *   <li>{@code updateLookup} is done by the launcher: the library splits the namespace at the
 *       wrong dot, so a collection named like {@code quotes.outbox} failed the lookup.</li>
 * </ul>
 */
public final class LiberatorMongo {

    private LiberatorMongo() {
    }

    public static void main(String[] args) {
        if (args.length != 3) {
            fail("usage: LiberatorMongo HOST PORT memory|h2:FILE");
        }
        String host = args[0];
        int port = 0;
        try {
            port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            fail("PORT must be a number, got '" + args[1] + "'");
        }
        MongoBackend backend = backend(args[2]);
        backend.version(new Mongo50());
        MongoServer server = new MongoServer(backend);
        server.enableOplog();
        try {
            server.bind(host, port);
        } catch (Exception e) {
            // Netty rethrows BindException undeclared; bind() has already shut the server down,
            // but Netty's threads would keep the JVM alive: exit instead.
            fail("cannot listen on " + host + ":" + port + ": " + e);
        }
        // A SIGTERM runs this hook: closing the backend flushes and closes the H2 file, so a
        // restart on the same file finds every acknowledged write and the oplog.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("liberator-mongo: shutting down");
            server.shutdownNow();
            System.out.println("liberator-mongo: stopped");
            System.out.flush();
        }, "liberator-mongo-shutdown"));
        // hack/localstack/mongo.py waits for a ping; this line is for people reading the log.
        System.out.println("liberator-mongo: ready on " + host + ":" + port + " backend=" + args[2]);
        System.out.flush();
    }

    private static MongoBackend backend(String spec) {
        if (spec.equals("memory")) {
            return new MemoryBackend() {
                @Override
                public Document handleCommand(Channel channel, String database, String command,
                                              Document query) {
                    return Patches.command(this, oplog, database, command, query,
                        () -> super.handleCommand(channel, database, command, query));
                }

                @Override
                protected Oplog createOplog() {
                    return Patches.oplog(this, super.createOplog());
                }
            };
        }
        if (spec.startsWith("h2:") && spec.length() > 3) {
            return new H2Backend(spec.substring(3)) {
                @Override
                public Document handleCommand(Channel channel, String database, String command,
                                              Document query) {
                    return Patches.command(this, oplog, database, command, query,
                        () -> super.handleCommand(channel, database, command, query));
                }

                @Override
                protected Oplog createOplog() {
                    return Patches.oplog(this, super.createOplog());
                }
            };
        }
        fail("backend must be 'memory' or 'h2:<file>', got '" + spec + "'");
        throw new AssertionError("unreachable");
    }

    /** What both backends add around the library (the same for memory and H2). */
    private static final class Patches {

        private Patches() {
        }

        static Document command(MongoBackend backend, Oplog oplog, String database,
                                String command, Document query, Supplier<Document> handle) {
            BsonTimestamp before = OperationTime.next();
            Document reply = handle.get();
            FindAndModify.log(backend, oplog, database, command, query, reply);
            ChangeEvents.repair(database, command, query, reply);
            return OperationTime.add(command, before, reply);
        }

        static Oplog oplog(MongoBackend backend, Oplog inner) {
            OperationTime.bind(inner);
            return new MarkingOplog(backend, inner);
        }
    }

    private static void fail(String message) {
        System.err.println("liberator-mongo: " + message);
        System.exit(2);
    }

    /** MongoDB 5.0 as a replica set member reports it: version 5.0.0, wire version 13. */
    private static final class Mongo50 implements MongoVersion {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(5, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 13;
        }
    }

    /**
     * The {@code operationTime} of an aggregate reply: the oplog position just after the last
     * entry written before the command ran. pymongo keeps it as {@code startAtOperationTime}
     * (inclusive) to resume a stream that has seen no event yet, so it must not be at or before
     * an entry the new stream does not return. Read before the command, so a write racing with
     * it is delivered twice on such a resume rather than lost.
     */
    private static final class OperationTime {

        private static volatile Object clock;
        private static volatile Method now;

        private OperationTime() {
        }

        /** Reads the library's private oplog clock; fails at start if its internals moved. */
        static void bind(Oplog oplog) {
            try {
                Field field = oplog.getClass().getDeclaredField("oplogClock");
                field.setAccessible(true);
                Object value = field.get(oplog);
                Method method = value.getClass().getDeclaredMethod("now");
                method.setAccessible(true);
                method.invoke(value);
                clock = value;
                now = method;
                continueAfter(oplog, value);
            } catch (ReflectiveOperationException | RuntimeException e) {
                fail("cannot read the oplog clock of this mongo-java-server version (" + e
                    + "); pin the version in hack/mongo/pom.xml");
            }
        }

        /**
         * The library's clock restarts its increment at 0, so a restart within the same second
         * as the last write would stamp new entries before old ones, and a stream resumed from
         * an old token would miss them. Continue from the highest increment in the oplog.
         */
        @SuppressWarnings("unchecked")
        private static void continueAfter(Oplog oplog, Object value)
            throws ReflectiveOperationException {
            Field field = oplog.getClass().getDeclaredField("collection");
            field.setAccessible(true);
            MongoCollection<Document> entries = (MongoCollection<Document>) field.get(oplog);
            int highest = entries.queryAllAsStream()
                .map(entry -> entry.get("ts"))
                .filter(BsonTimestamp.class::isInstance)
                .mapToInt(ts -> ((BsonTimestamp) ts).getInc())
                .max().orElse(0);
            Field counter = value.getClass().getDeclaredField("atomicIncrement");
            counter.setAccessible(true);
            ((AtomicInteger) counter.get(value)).accumulateAndGet(highest, Math::max);
        }

        static BsonTimestamp next() {
            if (now == null) {
                return null;
            }
            try {
                BsonTimestamp current = (BsonTimestamp) now.invoke(clock);
                // Timestamps order as (seconds << 32 | increment); the next entry is at least +1.
                return new BsonTimestamp(current.getValue() + 1);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException("cannot read the oplog clock", e);
            }
        }

        static Document add(String command, BsonTimestamp time, Document reply) {
            if (time != null && reply != null && command.equals("aggregate")
                && !reply.containsKey("operationTime")) {
                reply.put("operationTime", time);
            }
            return reply;
        }
    }

    /**
     * Writes one oplog entry per updated document whose {@code o} also carries the document's id
     * under {@link ChangeEvents#MARK}: the library's update entries keep the id only in
     * {@code o2}, which never reaches the change event. Also does the {@code updateLookup} of
     * change streams itself (see {@link UpdateLookup}).
     */
    private static final class MarkingOplog implements Oplog {

        private final MongoBackend backend;
        private final Oplog inner;

        MarkingOplog(MongoBackend backend, Oplog inner) {
            this.backend = backend;
            this.inner = inner;
        }

        @Override
        public void handleInsert(String namespace, List<Document> documents) {
            inner.handleInsert(namespace, documents);
        }

        @Override
        public void handleUpdate(String namespace, Document selector, Document query,
                                 List<Object> modifiedIds) {
            for (Object id : modifiedIds) {
                Document marked = query.clone();
                marked.put(ChangeEvents.MARK, id);
                inner.handleUpdate(namespace, selector, marked, List.of(id));
            }
        }

        @Override
        public void handleDelete(String namespace, Document query, List<Object> deletedIds) {
            inner.handleDelete(namespace, query, deletedIds);
        }

        @Override
        public void handleDropCollection(String namespace) {
            inner.handleDropCollection(namespace);
        }

        @Override
        public Cursor createCursor(Document changeStream, String namespace,
                                   Aggregation aggregation) {
            if (!"updateLookup".equals(changeStream.get("fullDocument"))) {
                return inner.createCursor(changeStream, namespace, aggregation);
            }
            // The library's lookup splits "db.quotes.outbox" at the last dot and fails with
            // "Collection [db.quotes] not found": hide the option from it and look up ourselves,
            // first in the pipeline, so a $match still sees the looked-up document.
            Document options = changeStream.clone();
            options.remove("fullDocument");
            aggregation.getStages().add(0, new UpdateLookup(backend, namespace));
            return inner.createCursor(options, namespace, aggregation);
        }
    }

    /**
     * The {@code updateLookup} of a change stream on {@code namespace}: an update event's
     * {@code fullDocument} becomes the document's current version, or null when it is gone.
     * The database name ends at the first dot (MongoDB allows dots in collection names).
     */
    private record UpdateLookup(MongoBackend backend, String namespace)
        implements AggregationStage {

        @Override
        public String name() {
            return "$liberatorUpdateLookup";
        }

        @Override
        public java.util.stream.Stream<Document> apply(java.util.stream.Stream<Document> events) {
            return events.map(this::lookUp);
        }

        private Document lookUp(Document event) {
            if (!"update".equals(event.get("operationType"))
                || !(event.get("documentKey") instanceof Document entry)) {
                return event;
            }
            Object id = entry.containsKey(ChangeEvents.MARK)
                ? entry.get(ChangeEvents.MARK) : entry.get("_id");
            int dot = namespace.indexOf('.');
            MongoCollection<?> collection = id == null || dot < 0 ? null
                : backend.resolveDatabase(namespace.substring(0, dot))
                    .resolveCollection(namespace.substring(dot + 1), false);
            Document found = collection == null ? null
                : collection.handleQueryAsStream(new Document("_id", id)).findFirst()
                    .map(Document::cloneDeeply).orElse(null);
            // The event is the library's fresh copy, not the stored oplog entry: safe to change.
            event.put("fullDocument", found);
            return event;
        }
    }

    /**
     * Repairs update events in change stream replies ({@code aggregate} and {@code getMore}) to
     * MongoDB's shape: {@code documentKey} is {@code {_id}}, a replacement is a {@code replace}
     * event whose {@code fullDocument} is the new document, an update's {@code fullDocument} is
     * the looked-up document or null ({@code updateLookup}) and absent otherwise, and each event
     * carries {@code ns}. A {@code $match} in the watch pipeline still sees the library's shape.
     */
    private static final class ChangeEvents {

        static final String MARK = "$liberatorDocumentId";

        private record Stream(String database, String collection, boolean lookup) {
        }

        private static final Map<Long, Stream> STREAMS = new ConcurrentHashMap<>();

        private ChangeEvents() {
        }

        static void repair(String database, String command, Document query, Document reply) {
            if (reply == null || !(reply.get("cursor") instanceof Document cursor)) {
                if (command.equals("killCursors") && query.get("cursors") instanceof List<?> ids) {
                    ids.forEach(STREAMS::remove);
                }
                return;
            }
            Stream stream = null;
            if (command.equals("aggregate")) {
                stream = open(database, query, cursor);
            } else if (command.equals("getMore") && query.get("getMore") instanceof Long id) {
                stream = STREAMS.get(id);
                if (stream != null && Long.valueOf(0).equals(cursor.get("id"))) {
                    STREAMS.remove(id);
                }
            }
            if (stream == null) {
                return;
            }
            for (String key : List.of("firstBatch", "nextBatch")) {
                if (cursor.get(key) instanceof List<?> batch) {
                    for (Object event : batch) {
                        if (event instanceof Document document) {
                            repairEvent(stream, document);
                        }
                    }
                }
            }
        }

        private static Stream open(String database, Document query, Document cursor) {
            if (!(query.get("pipeline") instanceof List<?> pipeline) || pipeline.isEmpty()
                || !(pipeline.get(0) instanceof Document first)
                || !(first.get("$changeStream") instanceof Document options)) {
                return null;
            }
            String collection = query.get("aggregate") instanceof String name ? name : null;
            Stream stream = new Stream(database, collection,
                "updateLookup".equals(options.get("fullDocument")));
            if (cursor.get("id") instanceof Long id && id != 0L) {
                STREAMS.put(id, stream);
            }
            return stream;
        }

        private static void repairEvent(Stream stream, Document event) {
            Document ns = new Document("db", stream.database());
            if (stream.collection() != null) {
                ns.append("coll", stream.collection());
            }
            if (!"update".equals(event.get("operationType"))
                || !(event.get("documentKey") instanceof Document entry)) {
                if (event.containsKey("documentKey")) {
                    event.put("ns", ns);
                }
                return;
            }
            // Never change `entry` itself: it is the oplog's own stored document.
            Object id = entry.containsKey(MARK) ? entry.get(MARK) : entry.get("_id");
            boolean replacement = entry.keySet().stream()
                .noneMatch(k -> k.startsWith("$") && !k.equals(MARK));
            event.put("ns", ns);
            event.put("documentKey", new Document("_id", id));
            if (replacement) {
                Document document = new Document("_id", id);
                entry.cloneDeeply().forEach((key, value) -> {
                    if (!key.equals(MARK) && !key.equals("_id")) {
                        document.put(key, value);
                    }
                });
                event.put("operationType", "replace");
                event.put("fullDocument", document);
            } else if (stream.lookup()) {
                Object found = event.get("fullDocument");
                boolean same = found instanceof Document doc && id != null
                    && id.equals(doc.get("_id"));
                event.put("fullDocument", same ? found : null);
            } else {
                event.remove("fullDocument");
            }
        }
    }

    /**
     * Writes the oplog entry that the library omits for {@code findAndModify}, from the command
     * and its reply: a delete, an insert (upsert) or an update of the one matched document.
     */
    private static final class FindAndModify {

        private FindAndModify() {
        }

        static void log(MongoBackend backend, Oplog oplog, String database, String command,
                        Document query, Document reply) {
            if (oplog == null || !command.equalsIgnoreCase("findAndModify") || reply == null
                || !(query.get(command) instanceof String collection)) {
                return;
            }
            // The library's reply has lastErrorObject only when an existing document was updated.
            String namespace = database + "." + collection;
            Document selector = query.get("query") instanceof Document q ? q : new Document();
            Object value = reply.get("value");
            boolean updated = reply.get("lastErrorObject") instanceof Document outcome
                && Boolean.TRUE.equals(outcome.get("updatedExisting"));
            if (Boolean.TRUE.equals(query.get("remove"))) {
                if (value instanceof Document before && before.containsKey("_id")) {
                    oplog.handleDelete(namespace, selector, List.of(before.get("_id")));
                }
            } else if (updated) {
                if (value instanceof Document document && document.containsKey("_id")
                    && query.get("update") instanceof Document update
                    && !unchanged(backend, database, collection, query, document)) {
                    oplog.handleUpdate(namespace, selector, update, List.of(document.get("_id")));
                }
            } else if (Boolean.TRUE.equals(query.get("upsert"))) {
                // An upsert inserted a document: read it back (it matches the selector).
                Document filter = value instanceof Document after && after.containsKey("_id")
                    ? new Document("_id", after.get("_id")) : selector;
                Document inserted = current(backend, database, collection, filter);
                if (inserted != null) {
                    oplog.handleInsert(namespace, List.of(inserted));
                }
            }
        }

        /**
         * Whether the update left the document as it was: MongoDB writes no oplog entry (so no
         * change event) for such a no-op. Known only when the reply holds the whole document
         * before the update (no {@code new}, no {@code fields}); otherwise assume a change.
         */
        private static boolean unchanged(MongoBackend backend, String database,
                                         String collection, Document query, Document before) {
            if (Boolean.TRUE.equals(query.get("new")) || query.get("fields") != null) {
                return false;
            }
            return before.equals(current(backend, database, collection,
                new Document("_id", before.get("_id"))));
        }

        private static Document current(MongoBackend backend, String database,
                                        String collection, Document filter) {
            MongoCollection<?> target = backend.resolveDatabase(database)
                .resolveCollection(collection, false);
            return target == null ? null : target.handleQueryAsStream(filter).findFirst()
                .map(Document::cloneDeeply).orElse(null);
        }
    }
}
