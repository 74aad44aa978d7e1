import java.time.Instant;
import java.util.ArrayList;
import java.util.Date;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.backend.BsonType;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.DefaultQueryMatcher;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.MinKey;
import de.bwaldvogel.mongo.bson.BsonRegularExpression;
import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;
import io.netty.channel.Channel;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.KeyValue;
import de.bwaldvogel.mongo.backend.ValueComparator;
import de.bwaldvogel.mongo.backend.AbstractSynchronizedMongoCollection;
import de.bwaldvogel.mongo.backend.DocumentWithPosition;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.h2.H2UniqueIndex;
import de.bwaldvogel.mongo.wire.bson.BsonDecoder;
import de.bwaldvogel.mongo.wire.bson.BsonEncoder;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import java.nio.ByteBuffer;
import org.h2.mvstore.DataUtils;
import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;
import org.h2.mvstore.WriteBuffer;
import org.h2.mvstore.type.BasicDataType;
import org.h2.mvstore.type.ObjectDataType;

/**
 * Starts mongo-java-server with an oplog and change streams of our own on a given host and port.
 * The library's own main classes bind 27017 and leave the oplog off, hence this launcher.
 *
 * <p>Usage: {@code java LiberatorMongo HOST PORT memory|h2:FILE [--oplog-max-entries N]
 * [--oplog-max-age-seconds S]}
 *
 * <p>What it changes so that pymongo 4.x sees what it sees on MongoDB (all documented in
 * docs/local-stack.md, MongoDB section):
 * <ul>
 *   <li>it reports MongoDB 5.0 with wire version 13, answers {@code hello} (and {@code helloOk}),
 *       and puts {@code operationTime} and {@code $clusterTime} on every reply;</li>
 *   <li>{@link LiberatorOplog} replaces the library's oplog and change stream cursor: entries
 *       shaped like MongoDB's, written only for documents that were stored, events shaped like
 *       MongoDB's before any client stage runs, {@code postBatchResumeToken} on every reply, an
 *       optional cap (by entries, by age) with {@code ChangeStreamHistoryLost} past it, and a
 *       scan that starts at the cursor's position instead of the oplog's beginning;</li>
 *   <li>{@code findAndModify} writes oplog entries (the library writes none);</li>
 *   <li>{@link SecondaryIndex}: a non-unique index is an index (the library keeps none), and a
 *       query or a leading {@code $match} with an equality on its first key reads only the
 *       documents it names;</li>
 *   <li>an insert reports {@code n} as the number of documents stored.</li>
 * </ul>
 */
public final class LiberatorMongo {

    private static final String USAGE = "usage: LiberatorMongo HOST PORT memory|h2:FILE"
        + " [--oplog-max-entries N] [--oplog-max-age-seconds S]";

    private LiberatorMongo() {
    }

    public static void main(String[] args) {
        if (args.length < 3) {
            fail(USAGE);
        }
        String host = args[0];
        int port = 0;
        try {
            port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            fail("PORT must be a number, got '" + args[1] + "'");
        }
        Limits limits = Limits.parse(List.of(args).subList(3, args.length));
        MongoBackend backend = backend(args[2], limits);
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
        // hack/liberator_stack/mongo.py waits for a ping; this line is for people reading the log.
        System.out.println("liberator-mongo: ready on " + host + ":" + port + " backend=" + args[2]
            + " oplog=" + limits);
        System.out.flush();
    }

    /** The oplog cap: at most {@code maxEntries} entries, none older than {@code maxAgeMillis}. */
    record Limits(long maxEntries, long maxAgeMillis) {

        static Limits parse(List<String> options) {
            long entries = 0;
            long age = 0;
            for (int i = 0; i < options.size(); i += 2) {
                String name = options.get(i);
                if (!name.equals("--oplog-max-entries") && !name.equals("--oplog-max-age-seconds")) {
                    fail("unknown option '" + name + "'; " + USAGE);
                }
                String value = i + 1 < options.size() ? options.get(i + 1) : "";
                if (name.equals("--oplog-max-entries")) {
                    entries = positive(name, value, "a whole number of entries, such as 1000");
                } else {
                    double seconds = 0;
                    try {
                        seconds = Double.parseDouble(value);
                    } catch (NumberFormatException e) {
                        seconds = -1;
                    }
                    if (!(seconds > 0) || Double.isInfinite(seconds)) {
                        fail(name + " must be a positive number of seconds, such as 3600, got '"
                            + value + "'");
                    }
                    age = Math.max(1, Math.round(seconds * 1000));
                }
            }
            return new Limits(entries, age);
        }

        private static long positive(String name, String value, String what) {
            try {
                long parsed = Long.parseLong(value);
                if (parsed > 0) {
                    return parsed;
                }
            } catch (NumberFormatException e) {
                // reported below
            }
            fail(name + " must be " + what + " (at least 1), got '" + value + "'");
            return 0;
        }

        boolean bounded() {
            return maxEntries > 0 || maxAgeMillis > 0;
        }

        @Override
        public String toString() {
            if (!bounded()) {
                return "unbounded";
            }
            return (maxEntries > 0 ? "max-entries=" + maxEntries : "")
                + (maxEntries > 0 && maxAgeMillis > 0 ? "," : "")
                + (maxAgeMillis > 0 ? "max-age-ms=" + maxAgeMillis : "");
        }
    }

    /** H2's page cache, in MB (the JVM's heap is sized for it in liberator_stack/mongo.py). */
    private static final int H2_CACHE_MB = 192;

    private static MongoBackend backend(String spec, Limits limits) {
        if (spec.equals("memory")) {
            return new MemoryBackend() {
                @Override
                public MemoryDatabase openOrCreateDatabase(String databaseName) {
                    return new MemoryDatabase(databaseName, getCursorRegistry()) {
                        @Override
                        protected Index<Integer> openOrCreateSecondaryIndex(
                            String collectionName, String indexName, List<IndexKey> keys,
                            boolean sparse) {
                            return new SecondaryIndex<>(indexName, keys, sparse,
                                SecondaryIndex.Entries.inMemory());
                        }
                    };
                }

                @Override
                public Document handleCommand(Channel channel, String database, String command,
                                              Document query) {
                    return Patches.command(this, oplog, database, command, query,
                        (name, q) -> super.handleCommand(channel, database, name, q));
                }

                @Override
                protected Oplog createOplog() {
                    return LiberatorOplog.open(this, getCursorRegistry(), limits);
                }
            };
        }
        if (spec.startsWith("h2:") && spec.length() > 3) {
            // H2's default page cache (16 MB) is smaller than an outbox of some thousand events:
            // each scan that no index serves then re-reads and re-decodes every page while it
            // holds the collection's lock, and writers wait.
            MVStore store = new MVStore.Builder().fileName(spec.substring(3))
                .cacheSize(H2_CACHE_MB).open();
            return new H2Backend(store) {
                @Override
                protected MongoDatabase openOrCreateDatabase(String databaseName) {
                    return new H2Store.Database(databaseName, getMvStore(), getCursorRegistry());
                }

                @Override
                public Document handleCommand(Channel channel, String database, String command,
                                              Document query) {
                    return Patches.command(this, oplog, database, command, query,
                        (name, q) -> super.handleCommand(channel, database, name, q));
                }

                @Override
                protected Oplog createOplog() {
                    return LiberatorOplog.open(this, getCursorRegistry(), limits);
                }
            };
        }
        fail("backend must be 'memory' or 'h2:<file>', got '" + spec + "'");
        throw new AssertionError("unreachable");
    }

    private static void fail(String message) {
        System.err.println("liberator-mongo: " + message);
        System.exit(2);
    }

    /**
     * The H2 backend's maps with key and value types of our own. The library opens every map
     * with H2's {@code ObjectDataType}, which compares index keys ({@code KeyValue}, not
     * {@code Comparable}) by Java-serializing both sides at every step of a B-tree search, and
     * stores documents with Java serialization: together most of the stand-in's CPU under load
     * (a JFR profile of {@code python -m bench --only e2e}). Here documents and keys are stored
     * as BSON, and keys compare in BSON order, as MongoDB's index keys do. Anything else (the
     * positions, counters) keeps H2's own encoding behind a tag byte.
     *
     * <p>The format differs from the library's, so the launcher's file has a name of its own
     * ({@code hack/liberator_stack/mongo.py}). {@code renameCollection} still opens its new maps with
     * the library's types: fine while the process runs, unreadable after a restart.
     */
    static final class H2Store {
        private static final byte OTHER = 0;
        private static final byte DOCUMENT = 1;
        private static final byte KEY = 2;

        private H2Store() {
        }

        static <K, V> MVMap.Builder<K, V> builder() {
            MVMap.Builder<K, V> builder = new MVMap.Builder<>();
            builder.keyType(Type.INSTANCE);
            builder.valueType(Type.INSTANCE);
            return builder;
        }

        /** The library's H2 database, with its maps opened through {@link #builder()}. */
        static final class Database extends H2Database {
            private static final java.lang.reflect.Constructor<H2UniqueIndex> INDEX;

            static {
                try {
                    INDEX = H2UniqueIndex.class.getDeclaredConstructor(MVMap.class, String.class,
                        List.class, boolean.class);
                    INDEX.setAccessible(true);
                } catch (ReflectiveOperationException e) {
                    throw new ExceptionInInitializerError(e);
                }
            }

            // The library's constructor already opens the existing collections through the
            // overrides below, before any field of this class is set: the store is passed in a
            // static, one per process.
            private static volatile MVStore store;

            Database(String name, MVStore mvStore, CursorRegistry registry) {
                super(remember(name, mvStore), mvStore, registry);
            }

            private static String remember(String name, MVStore mvStore) {
                store = mvStore;
                return name;
            }

            @Override
            protected MongoCollection<Object> openOrCreateCollection(String collectionName,
                                                                     CollectionOptions options) {
                String namespace = getFullCollectionNamespace(collectionName);
                MVMap<Object, Document> data = store.openMap("databases." + namespace, builder());
                MVMap<String, Object> meta = store.openMap("meta." + namespace, builder());
                return new Collection(this, collectionName, options, data, meta,
                    cursorRegistry);
            }

            @Override
            protected Index<Object> openOrCreateSecondaryIndex(String collectionName,
                                                               String indexName,
                                                               List<IndexKey> keys,
                                                               boolean sparse) {
                // The name the library's dropIndex removes (H2Database#mapNameForIndex).
                MVMap<KeyValue, Object> map = store.openMap(
                    getFullCollectionNamespace(collectionName) + "._index_" + indexName,
                    builder());
                return new SecondaryIndex<>(indexName, keys, sparse,
                    SecondaryIndex.Entries.of(map));
            }

            @Override
            protected Index<Object> openOrCreateUniqueIndex(String collectionName,
                                                            String indexName,
                                                            List<IndexKey> keys, boolean sparse) {
                MVMap<KeyValue, Object> map = store.openMap(
                    getFullCollectionNamespace(collectionName) + "._index_" + indexName,
                    builder());
                try {
                    return INDEX.newInstance(map, indexName, keys, sparse);
                } catch (ReflectiveOperationException e) {
                    throw new IllegalStateException("cannot open index " + indexName, e);
                }
            }
        }

        /**
         * A collection stored as MongoDB's WiredTiger stores one: documents under a record id
         * that grows with each insert, and {@code _id} an index like any other (the library's
         * H2 collection keys its documents by {@code _id}). H2 re-encodes every page a commit
         * changed: with random ids (the outbox's UUIDs) each insert and update dirtied a page
         * of documents somewhere in the tree, and serialization took most of the stand-in's
         * CPU. Under record ids, recent documents share the last pages, and the pages of the
         * {@code _id} index hold small entries. {@code $natural} order is insertion order, as
         * in MongoDB. A leading {@code $match} in {@code aggregate} is served by an index.
         */
        static final class Collection extends AbstractSynchronizedMongoCollection<Object> {
            private static final String DATA_SIZE = "dataSize";
            private final MVMap<Object, Document> data;
            private final MVMap<String, Object> meta;
            private final AtomicLong lastRecord;

            Collection(H2Database database, String name, CollectionOptions options,
                       MVMap<Object, Document> data, MVMap<String, Object> meta,
                       CursorRegistry registry) {
                super(database, name, options, registry);
                this.data = data;
                this.meta = meta;
                meta.putIfAbsent(DATA_SIZE, 0L);
                Object last = data.isEmpty() ? 0L : data.lastKey();
                if (!(last instanceof Long record)) {
                    // A file from a launcher that keyed documents by _id.
                    throw new IllegalStateException("collection " + getFullName() + " in the"
                        + " H2 file is not keyed by record id: remove the file and start again");
                }
                this.lastRecord = new AtomicLong(record);
            }

            @Override
            protected Object addDocumentInternal(Document document) {
                Long record = lastRecord.incrementAndGet();
                data.put(record, document);
                return record;
            }

            @Override
            public int count() {
                return data.size();
            }

            @Override
            public boolean isEmpty() {
                return data.isEmpty();
            }

            @Override
            protected Document getDocument(Object position) {
                return data.get(position);
            }

            @Override
            protected void removeDocument(Object position) {
                if (data.remove(position) == null) {
                    throw new java.util.NoSuchElementException("no document at record "
                        + position);
                }
            }

            @Override
            protected void handleUpdate(Object position, Document oldDocument,
                                        Document newDocument) {
                data.put(position, newDocument);
            }

            @Override
            protected void updateDataSize(int sizeDelta) {
                synchronized (meta) {
                    meta.put(DATA_SIZE, ((Number) meta.get(DATA_SIZE)).longValue() + sizeDelta);
                }
            }

            @Override
            protected int getDataSize() {
                return ((Number) meta.get(DATA_SIZE)).intValue();
            }

            @Override
            protected Stream<DocumentWithPosition<Object>> streamAllDocumentsWithPosition() {
                return data.entrySet().stream()
                    .map(entry -> new DocumentWithPosition<>(entry.getValue(), entry.getKey()));
            }

            @Override
            protected QueryResult matchDocuments(Document query, Document orderBy,
                                                 int numberToSkip, int limit, int batchSize,
                                                 Document fieldSelector) {
                Stream<Document> documents = data.values().stream();
                if (isNaturalDescending(orderBy)) {
                    // Record ids grow with each insert: descending ids are the newest first.
                    documents = StreamSupport.stream(
                        ((Iterable<Document>) () -> descending()).spliterator(), false);
                }
                return matchDocumentsFromStream(documents, query, orderBy, numberToSkip, limit,
                    batchSize, fieldSelector);
            }

            private Iterator<Document> descending() {
                Iterator<Object> keys = data.keyIteratorReverse(null);
                return new Iterator<>() {
                    @Override
                    public boolean hasNext() {
                        return keys.hasNext();
                    }

                    @Override
                    public Document next() {
                        return data.get(keys.next());
                    }
                };
            }

            /** What {@code aggregate} reads: the documents its leading {@code $match} names
             * (through an index where one serves it), else every document. The stage itself
             * still runs on them. */
            @Override
            public Stream<Document> queryAllAsStream() {
                Document match = SecondaryIndex.LEADING_MATCH.get();
                if (match == null) {
                    return super.queryAllAsStream();
                }
                SecondaryIndex.LEADING_MATCH.remove(); // the first read is the pipeline's source
                return StreamSupport.stream(
                    queryDocuments(match, null, 0, 0, 0, null).spliterator(), false);
            }
        }

        /** Keys and values of every map: BSON for documents and index keys. */
        static final class Type extends BasicDataType<Object> {
            static final Type INSTANCE = new Type();
            private static final ObjectDataType FALLBACK = new ObjectDataType();
            private static final ValueComparator ORDER = ValueComparator.asc();

            @Override
            public int compare(Object a, Object b) {
                if (a instanceof KeyValue x && b instanceof KeyValue y) {
                    if (x.size() != y.size()) {
                        return Integer.compare(x.size(), y.size());
                    }
                    for (int i = 0; i < x.size(); i++) {
                        int c = ORDER.compare(x.get(i), y.get(i));
                        if (c != 0) {
                            return c;
                        }
                    }
                    return 0;
                }
                // Document ids, positions and meta names: BSON order too (H2's own compare
                // refuses two ids of different classes).
                return ORDER.compare(a, b);
            }

            @Override
            public int getMemory(Object obj) {
                // An estimate for H2's page cache; serializing to measure was part of the cost.
                if (obj instanceof Document document) {
                    return 64 + 48 * document.size();
                }
                if (obj instanceof KeyValue key) {
                    return 32 + 24 * key.size();
                }
                return FALLBACK.getMemory(obj);
            }

            @Override
            public boolean isMemoryEstimationAllowed() {
                return false;
            }

            @Override
            public void write(WriteBuffer buffer, Object obj) {
                if (obj instanceof Document document) {
                    byte[] bson = bson(document);
                    if (bson != null) {
                        buffer.put(DOCUMENT).putVarInt(bson.length).put(bson);
                        return;
                    }
                } else if (obj instanceof KeyValue key) {
                    byte[] bson = bson(new Document("k", new ArrayList<>(key.stream().toList())));
                    if (bson != null) {
                        buffer.put(KEY).putVarInt(bson.length).put(bson);
                        return;
                    }
                }
                buffer.put(OTHER);
                FALLBACK.write(buffer, obj);
            }

            @Override
            public Object read(ByteBuffer buffer) {
                byte tag = buffer.get();
                if (tag == OTHER) {
                    return FALLBACK.read(buffer);
                }
                byte[] bson = new byte[DataUtils.readVarInt(buffer)];
                buffer.get(bson);
                Document document = BsonDecoder.decodeBson(Unpooled.wrappedBuffer(bson));
                if (tag == DOCUMENT) {
                    return document;
                }
                return new KeyValue((List<?>) document.get("k"));
            }

            @Override
            public Object[] createStorage(int size) {
                return new Object[size];
            }

            /** The BSON of {@code document}, or null for a value BSON cannot hold (such as
             * the library's Missing in a key), which then keeps H2's own encoding. */
            private static byte[] bson(Document document) {
                ByteBuf buffer = Unpooled.buffer();
                try {
                    BsonEncoder.encodeDocument(document, buffer);
                    byte[] bytes = new byte[buffer.readableBytes()];
                    buffer.readBytes(bytes);
                    return bytes;
                } catch (RuntimeException e) {
                    return null;
                } finally {
                    buffer.release();
                }
            }
        }
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

    @FunctionalInterface
    private interface Handler {
        Document handle(String command, Document query);
    }

    /** What both backends add around the library's command handling. */
    private static final class Patches {

        private Patches() {
        }

        static Document command(MongoBackend backend, Oplog current, String database,
                                String command, Document query, Handler handle) {
            LiberatorOplog oplog = current instanceof LiberatorOplog ours ? ours : null;
            // Drivers gossip back the $clusterTime we send; the library knows no such field.
            query.remove("$clusterTime");
            BsonTimestamp before = oplog == null ? null : oplog.nextTime();
            ChangeCursor.LAST.remove();
            try {
                Document reply;
                if (command.equals("hello")) {
                    reply = hello(handle.handle("isMaster", query));
                } else if (command.equalsIgnoreCase("listCollections")) {
                    reply = ListCollections.apply(query, handle.handle(command, query));
                } else if (oplog != null && command.equals("find") && database.equals("local")
                    && "oplog.rs".equals(query.get("find"))) {
                    reply = oplog.find(query);
                } else if (command.equals("insert") && oplog != null) {
                    reply = oplog.insert(query, () -> handle.handle(command, query));
                } else {
                    Document counted = null;
                    if (command.equals("aggregate")) {
                        Stages.aliases(query);
                        counted = SecondaryIndex.countScan(backend, database, query);
                        SecondaryIndex.LEADING_MATCH.set(SecondaryIndex.leadingMatch(query));
                    }
                    reply = counted != null ? counted : handle.handle(command, query);
                    if (command.equalsIgnoreCase("isMaster") && reply != null
                        && Boolean.TRUE.equals(query.get("helloOk"))) {
                        reply.put("helloOk", Boolean.TRUE); // MongoDB 4.4.2+: drivers use hello
                    }
                }
                FindAndModify.log(backend, current, database, command, query, reply);
                ChangeCursor cursor = ChangeCursor.LAST.get();
                if (cursor != null && reply != null
                    && reply.get("cursor") instanceof Document batch) {
                    batch.put("postBatchResumeToken", cursor.postBatchResumeToken());
                }
                return times(oplog, command, before, reply);
            } catch (ChangeStreamError e) {
                return times(oplog, command, before, e.reply());
            } finally {
                ChangeCursor.LAST.remove();
                SecondaryIndex.LEADING_MATCH.remove();
            }
        }

        /** MongoDB's hello: isMaster's reply with {@code isWritablePrimary} for {@code ismaster}. */
        private static Document hello(Document isMaster) {
            Document reply = new Document("isWritablePrimary", Boolean.TRUE);
            isMaster.forEach((key, value) -> {
                if (!key.equals("ismaster")) {
                    reply.put(key, value);
                }
            });
            return reply;
        }

        /**
         * {@code operationTime} and {@code $clusterTime} on every reply, as a replica set member
         * sends them: the newest oplog entry (a write's own, after it). For {@code aggregate},
         * the position just after the last entry written before the command ran: pymongo keeps
         * it as {@code startAtOperationTime} (inclusive) when a stream has no token, so a write
         * racing with the command is delivered twice rather than lost.
         */
        private static Document times(LiberatorOplog oplog, String command, BsonTimestamp before,
                                      Document reply) {
            if (oplog == null || reply == null) {
                return reply;
            }
            BsonTimestamp now = oplog.currentTime();
            reply.putIfAbsent("operationTime", command.equals("aggregate") ? before : now);
            reply.put("$clusterTime", new Document("clusterTime", now)
                .append("signature", new Document("hash", new BinData(new byte[20]))
                    .append("keyId", 0L)));
            return reply;
        }
    }

    /**
     * A non-unique index, as MongoDB keeps one. The library's backends keep none (a non-unique
     * index is an {@code EmptyIndex}), so every query on such a field scanned the whole
     * collection while holding its lock: an outbox's {@code {status: "pending"}} sweep and
     * count cost more with every event ever published, and writers waited.
     *
     * <p>Entries are {@code (values of the keys..., _id) -> position}, in BSON order, one per
     * key value of a document (an array indexes each element, as MongoDB's multikey indexes
     * do). A query with an equality on the first key reads the entries with that value; the
     * library's matcher then applies the whole query, the sort and the projection to those
     * documents only. Other shapes (ranges, {@code $in}, no equality on the first key) scan, as
     * before. The key directions are not needed for that and are ignored.
     */
    static final class SecondaryIndex<P> extends Index<P> {
        /** The leading {@code $match} of the {@code aggregate} this thread runs, if any. */
        static final ThreadLocal<Document> LEADING_MATCH = new ThreadLocal<>();

        private static final ValueComparator ORDER = ValueComparator.asc();

        /** Where the entries live: an H2 map (kept with the data), or memory; both sorted by
         * {@link H2Store.Type}'s BSON order. */
        record Entries<P>(Map<KeyValue, P> map,
                          java.util.function.Function<KeyValue,
                              Iterator<Map.Entry<KeyValue, P>>> from) {

            static <P> Entries<P> of(MVMap<KeyValue, P> map) {
                return new Entries<>(map, key -> {
                    org.h2.mvstore.Cursor<KeyValue, P> cursor = map.cursor(key);
                    return new Iterator<Map.Entry<KeyValue, P>>() {
                        public boolean hasNext() {
                            return cursor.hasNext();
                        }

                        public Map.Entry<KeyValue, P> next() {
                            KeyValue next = cursor.next();
                            return Map.entry(next, cursor.getValue());
                        }
                    };
                });
            }

            static <P> Entries<P> inMemory() {
                ConcurrentSkipListMap<KeyValue, P> map =
                    new ConcurrentSkipListMap<>(H2Store.Type.INSTANCE::compare);
                return new Entries<>(map, key -> map.tailMap(key).entrySet().iterator());
            }
        }

        private final Entries<P> entries;

        SecondaryIndex(String name, List<IndexKey> keys, boolean sparse, Entries<P> entries) {
            super(name, keys, sparse);
            this.entries = entries;
        }

        /** The {@code $match} of an {@code aggregate} command's first stage, or null. */
        static Document leadingMatch(Document command) {
            if (command.get("pipeline") instanceof List<?> stages && !stages.isEmpty()
                && stages.get(0) instanceof Document first && first.size() == 1
                && first.get("$match") instanceof Document match) {
                return match;
            }
            return null;
        }

        /**
         * A count answered from an index alone, as MongoDB's COUNT_SCAN answers it: the
         * pipeline of pymongo's {@code count_documents},
         * {@code [{$match: {field: value}}, {$group: {_id: C, n: {$sum: 1}}}]}, where an index
         * starts with {@code field}. No document is read. Null when the command has another
         * shape or no index serves it: the library runs it then.
         */
        static Document countScan(MongoBackend backend, String database, Document command) {
            Document match = leadingMatch(command);
            if (match == null || match.size() != 1
                || !(command.get("pipeline") instanceof List<?> stages) || stages.size() != 2
                || !(stages.get(1) instanceof Document group) || group.size() != 1
                || !(group.get("$group") instanceof Document spec) || spec.size() != 2
                || !spec.containsKey("_id") || spec.get("_id") instanceof String
                || spec.get("_id") instanceof Document
                || !(command.get("aggregate") instanceof String name)) {
                return null;
            }
            String field = spec.keySet().stream().filter(k -> !k.equals("_id")).findFirst()
                .orElseThrow();
            if (!(spec.get(field) instanceof Document sum) || sum.size() != 1
                || !(sum.get("$sum") instanceof Number one) || one.doubleValue() != 1.0) {
                return null;
            }
            MongoCollection<?> collection = backend.resolveDatabase(database)
                .resolveCollection(name, false);
            if (collection == null) {
                return null;
            }
            for (Index<?> index : collection.getIndexes()) {
                if (index instanceof SecondaryIndex<?> secondary && secondary.canHandle(match)) {
                    int count = secondary.countEqual(match);
                    List<Document> batch = count == 0 ? List.of()
                        : List.of(new Document("_id", spec.get("_id")).append(field, count));
                    return new Document("cursor", new Document("firstBatch", batch)
                        .append("id", 0L).append("ns", database + "." + name))
                        .append("ok", 1.0);
                }
            }
            return null;
        }

        /** How many documents have the equality of {@code query} on the first key. */
        synchronized int countEqual(Document query) {
            Set<P> positions = new HashSet<>();
            scan(query, positions);
            return positions.size();
        }

        /** The entry keys of a document: its key values, each followed by its {@code _id}. */
        private Set<KeyValue> entryKeys(Document document) {
            if (isSparse() && keys().stream().allMatch(
                key -> Utils.getSubdocumentValue(document, key) instanceof Missing)) {
                return Set.of();
            }
            Object id = new KeyValue(document.get("_id")).normalized().get(0);
            Set<KeyValue> keys = new LinkedHashSet<>();
            Set<KeyValue> valueSets = getKeyValues(document);
            if (valueSets.isEmpty()) {
                // An empty array multiplies to no key at all; MongoDB indexes it as undefined
                // (here null), and the other keys' values must still find the document.
                List<Object> values = new ArrayList<>();
                for (String key : keys()) {
                    Object value = Utils.getSubdocumentValueCollectionAware(document, key);
                    values.add(value instanceof java.util.Collection<?> c && c.isEmpty()
                        ? null : value);
                }
                valueSets = Set.of(new KeyValue(values).normalized());
            }
            for (KeyValue values : valueSets) {
                List<Object> key = new ArrayList<>(values.size() + 1);
                values.forEach(key::add);
                key.add(id);
                keys.add(new KeyValue(key));
            }
            return keys;
        }

        @Override
        public synchronized P getPosition(Document document) {
            for (KeyValue key : entryKeys(document)) {
                return entries.map().get(key);
            }
            return null;
        }

        @Override
        public void checkAdd(Document document, MongoCollection<P> collection) {
            // not unique: nothing to refuse
        }

        @Override
        public synchronized void add(Document document, P position,
                                     MongoCollection<P> collection) {
            for (KeyValue key : entryKeys(document)) {
                entries.map().put(key, position);
            }
        }

        @Override
        public synchronized P remove(Document document) {
            P position = null;
            for (KeyValue key : entryKeys(document)) {
                P removed = entries.map().remove(key);
                position = removed != null ? removed : position;
            }
            return position;
        }

        @Override
        public void checkUpdate(Document oldDocument, Document newDocument,
                                MongoCollection<P> collection) {
            // not unique: nothing to refuse
        }

        @Override
        public synchronized void updateInPlace(Document oldDocument, Document newDocument,
                                               P position, MongoCollection<P> collection) {
            Set<KeyValue> before = entryKeys(oldDocument);
            Set<KeyValue> after = entryKeys(newDocument);
            for (KeyValue key : before) {
                if (!after.contains(key)) {
                    entries.map().remove(key);
                }
            }
            for (KeyValue key : after) {
                if (!before.contains(key)) {
                    entries.map().put(key, position);
                }
            }
        }

        /** An equality on the first key, with a value that is not an array, a document (an
         * embedded match or operators), a regular expression or null. */
        @Override
        public boolean canHandle(Document query) {
            Object value = query.get(keys().get(0));
            return value != null && !(value instanceof Document)
                && !(value instanceof java.util.Collection<?>)
                && !(value instanceof java.util.regex.Pattern)
                && !BsonRegularExpression.isRegularExpression(value)
                && !(value instanceof Missing);
        }

        @Override
        public synchronized Iterable<P> getPositions(Document query) {
            Set<P> positions = new LinkedHashSet<>();
            scan(query, positions);
            return positions;
        }

        /** Adds the position of each entry with the query's value of the first key. */
        private void scan(Document query, Set<P> positions) {
            Object value = new KeyValue(query.get(keys().get(0))).normalized().get(0);
            List<Object> probe = new ArrayList<>();
            probe.add(value);
            while (probe.size() < getKeys().size() + 1) {
                probe.add(MinKey.getInstance());
            }
            Iterator<Map.Entry<KeyValue, P>> it = entries.from().apply(new KeyValue(probe));
            while (it.hasNext()) {
                Map.Entry<KeyValue, P> entry = it.next();
                if (ORDER.compare(entry.getKey().get(0), value) != 0) {
                    break;
                }
                positions.add(entry.getValue());
            }
        }

        @Override
        public long getCount() {
            return entries.map().size();
        }

        @Override
        public long getDataSize() {
            return getCount();
        }

        @Override
        public void drop() {
            // the H2 map is removed by the library's dropIndex
        }
    }

    /** Pipeline stages of MongoDB 4.2+ that the library lacks, as the stages they alias. */
    private static final class Stages {

        private Stages() {
        }

        /** {@code $set} is {@code $addFields}; {@code $replaceWith: X} is {@code $replaceRoot}. */
        static void aliases(Document query) {
            if (!(query.get("pipeline") instanceof List<?> stages)) {
                return;
            }
            List<Object> rewritten = new ArrayList<>(stages.size());
            for (Object stage : stages) {
                if (stage instanceof Document d && d.size() == 1 && d.containsKey("$set")) {
                    stage = new Document("$addFields", d.get("$set"));
                } else if (stage instanceof Document d && d.size() == 1
                    && d.containsKey("$replaceWith")) {
                    stage = new Document("$replaceRoot",
                        new Document("newRoot", d.get("$replaceWith")));
                }
                rewritten.add(stage);
            }
            query.put("pipeline", rewritten);
        }
    }

    /**
     * {@code listCollections} as MongoDB runs it: the library lists every collection and ignores
     * {@code filter} and {@code nameOnly}. The filter is a query on each collection's entry
     * ({@code name}, {@code type}, {@code options}, {@code info}); {@code nameOnly} keeps
     * {@code name} and {@code type}.
     */
    private static final class ListCollections {

        private ListCollections() {
        }

        static Document apply(Document query, Document reply) {
            Object filter = query.get("filter");
            if (filter != null && !(filter instanceof Document)) {
                // MongoDB's wording and code (14, TypeMismatch).
                throw new MongoServerError(14, "TypeMismatch", "BSON field 'listCollections.filter'"
                    + " is the wrong type '" + typeName(filter) + "', expected type 'object'");
            }
            if (reply == null || !(reply.get("cursor") instanceof Document cursor)
                || !(cursor.get("firstBatch") instanceof List<?> batch)) {
                return reply;
            }
            DefaultQueryMatcher matcher = new DefaultQueryMatcher();
            boolean nameOnly = Utils.isTrue(query.get("nameOnly"));
            List<Document> kept = new ArrayList<>();
            for (Object entry : batch) {
                if (entry instanceof Document collection
                    && (filter == null || matcher.matches(collection, (Document) filter))) {
                    kept.add(nameOnly ? new Document("name", collection.get("name"))
                        .append("type", collection.get("type")) : collection);
                }
            }
            cursor.put("firstBatch", kept);
            return reply;
        }

        private static String typeName(Object value) {
            for (BsonType type : BsonType.values()) {
                if (type.matches(value)) {
                    return type.getAlias();
                }
            }
            return value.getClass().getSimpleName();
        }
    }

    /** A server error that MongoDB sends with error labels (the library has no such field). */
    static final class ChangeStreamError extends MongoServerError {

        private final List<String> labels;

        ChangeStreamError(int code, String codeName, String message, List<String> labels) {
            super(code, codeName, message);
            this.labels = labels;
        }

        static ChangeStreamError historyLost() {
            return new ChangeStreamError(286, "ChangeStreamHistoryLost",
                "Resume of change stream was not possible, as the resume point may no longer be"
                    + " in the oplog.", List.of("NonResumableChangeStreamError"));
        }

        Document reply() {
            Document reply = new Document("ok", 0.0)
                .append("errmsg", getMessageWithoutErrorCode())
                .append("code", getCode())
                .append("codeName", getCodeName());
            if (!labels.isEmpty()) {
                reply.append("errorLabels", labels);
            }
            return reply;
        }
    }

    /**
     * The oplog and change streams, as MongoDB has them, in place of the library's. Entries live
     * in {@code local.oplog.rs} (so the H2 file keeps them) and in a map ordered by timestamp,
     * which every change stream scan starts from at its own position.
     *
     * <ul>
     *   <li>Entries: {@code i} (o: the document), {@code u} (o: {@code {$v: 2, diff}} for an
     *       update, the whole new document for a replacement; o2: {@code {_id}}), {@code d},
     *       {@code c} ({@code {drop: coll}}), {@code n} (no-op: the first entry, and the marker
     *       left where the oplog was trimmed). Nothing is logged for the {@code local} database.</li>
     *   <li>Timestamps: (seconds, counter from 1 within each second), as MongoDB's; after a
     *       restart they continue after the highest stored one.</li>
     *   <li>Cap: oldest entries go first; a no-op entry with the newest trimmed timestamp stays
     *       at the front, so a resume point before it fails with 286 even after a restart.</li>
     * </ul>
     */
    static final class LiberatorOplog implements Oplog {

        private static final String COLLECTION = "oplog.rs";
        private static final String TRIMMED = "liberator: oplog trimmed up to here";

        private final MongoBackend backend;
        private final MongoCollection<Document> store;
        private final CursorRegistry registry;
        private final Limits limits;
        /** Timestamp value to entry, in timestamp order; written only under {@code lock}. */
        final ConcurrentSkipListMap<Long, Document> entries = new ConcurrentSkipListMap<>();
        private final Object lock = new Object();
        private volatile long last;
        private static final ThreadLocal<List<Object[]>> PENDING = new ThreadLocal<>();

        private LiberatorOplog(MongoBackend backend, MongoCollection<Document> store,
                               CursorRegistry registry, Limits limits) {
            this.backend = backend;
            this.store = store;
            this.registry = registry;
            this.limits = limits;
        }

        @SuppressWarnings("unchecked")
        static LiberatorOplog open(MongoBackend backend, CursorRegistry registry, Limits limits) {
            MongoDatabase local = backend.resolveDatabase("local");
            MongoCollection<Document> store =
                (MongoCollection<Document>) local.resolveCollection(COLLECTION, false);
            if (store == null) {
                store = (MongoCollection<Document>) local.createCollectionOrThrowIfExists(
                    COLLECTION);
            }
            LiberatorOplog oplog = new LiberatorOplog(backend, store, registry, limits);
            store.queryAllAsStream().forEach(entry -> {
                if (entry.get("ts") instanceof BsonTimestamp ts) {
                    oplog.entries.put(ts.getValue(), entry);
                }
            });
            synchronized (oplog.lock) {
                oplog.last = oplog.entries.isEmpty() ? 0 : oplog.entries.lastKey();
                if (oplog.entries.isEmpty()) {
                    // A replica set's oplog begins with this no-op: nothing is older.
                    oplog.appendLocked(List.of(entry("n", "", new Document("msg",
                        "initiating set"), null)));
                }
                oplog.trimLocked();
            }
            if (limits.maxAgeMillis() > 0) {
                ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(r -> {
                    Thread thread = new Thread(r, "liberator-oplog-trim");
                    thread.setDaemon(true);
                    return thread;
                });
                long every = Math.max(50, Math.min(1000, limits.maxAgeMillis() / 4));
                timer.scheduleWithFixedDelay(() -> {
                    synchronized (oplog.lock) {
                        oplog.trimLocked();
                    }
                }, every, every, TimeUnit.MILLISECONDS);
            }
            return oplog;
        }

        // ---- reading ----

        /**
         * {@code find} on {@code local.oplog.rs} as MongoDB answers it: {@code $natural} order is
         * timestamp order (a capped collection's insertion order), which the store's own order is
         * not once entries are trimmed. Takes {@code filter}, {@code sort} by {@code $natural} or
         * {@code ts} (1 or -1), {@code skip}, {@code limit} and an inclusion {@code projection};
         * the whole answer comes in the first batch.
         */
        Document find(Document query) {
            Document filter = query.get("filter") instanceof Document f ? f : new Document();
            boolean reverse = false;
            if (query.get("sort") instanceof Document sort && !sort.isEmpty()) {
                if (sort.size() != 1 || !(sort.containsKey("$natural") || sort.containsKey("ts"))) {
                    throw new MongoServerError(2, "BadValue", "liberator-mongo: local.oplog.rs "
                        + "sorts by $natural or ts only, not " + sort.keySet());
                }
                reverse = ((Number) sort.values().iterator().next()).intValue() < 0;
            }
            long skip = query.get("skip") instanceof Number n ? n.longValue() : 0;
            long limit = query.get("limit") instanceof Number n ? Math.abs(n.longValue()) : 0;
            Document projection = query.get("projection") instanceof Document p ? p : null;
            DefaultQueryMatcher matcher = new DefaultQueryMatcher();
            List<Document> batch = new ArrayList<>();
            for (Document entry : reverse ? entries.descendingMap().values() : entries.values()) {
                if (!matcher.matches(entry, filter) || skip-- > 0) {
                    continue;
                }
                batch.add(project(entry, projection));
                if (limit > 0 && batch.size() >= limit) {
                    break;
                }
            }
            Document cursor = new Document("firstBatch", batch).append("id", 0L)
                .append("ns", "local." + COLLECTION);
            return new Document("cursor", cursor).append("ok", 1.0);
        }

        private static Document project(Document entry, Document projection) {
            if (projection == null || projection.isEmpty()) {
                return entry.cloneDeeply();
            }
            Document kept = new Document();
            projection.forEach((field, include) -> {
                if (Utils.isTrue(include) && entry.containsKey(field)) {
                    kept.put(field, entry.get(field));
                }
            });
            return kept.cloneDeeply();
        }

        // ---- time ----

        /** The timestamp of the newest entry. */
        BsonTimestamp currentTime() {
            long value = last;
            return value == 0 ? new BsonTimestamp(Instant.now(), 0) : new BsonTimestamp(value);
        }

        /** At or before the timestamp of the next entry. */
        BsonTimestamp nextTime() {
            return new BsonTimestamp(currentTime().getValue() + 1);
        }

        private BsonTimestamp tick() {
            long seconds = Math.max(Instant.now().getEpochSecond(), last >>> 32);
            long value = seconds == last >>> 32 ? last + 1 : seconds << 32 | 1;
            last = value;
            return new BsonTimestamp(value);
        }

        // ---- writing ----

        private static Document entry(String op, String namespace, Document o, Document o2) {
            Document entry = new Document("op", op).append("ns", namespace).append("o", o);
            if (o2 != null) {
                entry.append("o2", o2);
            }
            return entry;
        }

        private static boolean logged(String namespace) {
            return !namespace.startsWith("local.");
        }

        private void append(List<Document> batch) {
            if (batch.isEmpty()) {
                return;
            }
            synchronized (lock) {
                appendLocked(batch);
                trimLocked();
            }
        }

        private void appendLocked(List<Document> batch) {
            for (Document body : batch) {
                BsonTimestamp ts = tick();
                Document entry = new Document("ts", ts).append("t", 1L).append("v", 2L);
                entry.putAll(body);
                entry.append("wall", Instant.now());
                store.addDocument(entry);
                entries.put(ts.getValue(), entry);
            }
        }

        /**
         * Runs an {@code insert} command and logs only the documents it stored: MongoDB writes
         * no oplog entry for a failed insert, nor for the documents an ordered insert never
         * reached after its first error. Also sets {@code n} to that count (the library counts
         * every document sent).
         */
        Document insert(Document query, java.util.function.Supplier<Document> run) {
            List<Object[]> pending = new ArrayList<>();
            PENDING.set(pending);
            Document reply;
            try {
                reply = run.get();
            } finally {
                PENDING.remove();
            }
            Set<Integer> failed = new HashSet<>();
            if (reply != null && reply.get("writeErrors") instanceof List<?> errors) {
                for (Object error : errors) {
                    if (error instanceof Document e && e.get("index") instanceof Number index) {
                        failed.add(index.intValue());
                    }
                }
            }
            int first = failed.stream().mapToInt(Integer::intValue).min().orElse(Integer.MAX_VALUE);
            boolean ordered = Utils.isTrue(query.get("ordered")); // as the library reads it
            int stored = 0;
            for (Object[] call : pending) {
                @SuppressWarnings("unchecked")
                List<Document> documents = (List<Document>) call[1];
                List<Document> batch = new ArrayList<>();
                for (int i = 0; i < documents.size(); i++) {
                    if (ordered ? i < first : !failed.contains(i)) {
                        batch.add(entry("i", (String) call[0], documents.get(i).cloneDeeply(),
                            null));
                    }
                }
                stored += batch.size();
                if (logged((String) call[0])) {
                    append(batch);
                }
            }
            if (reply != null && !pending.isEmpty()) {
                reply.put("n", stored);
            }
            return reply;
        }

        @Override
        public void handleInsert(String namespace, List<Document> documents) {
            List<Object[]> pending = PENDING.get();
            if (pending != null) {
                pending.add(new Object[] {namespace, documents}); // logged by insert()
                return;
            }
            if (logged(namespace)) {
                append(documents.stream()
                    .map(document -> entry("i", namespace, document.cloneDeeply(), null))
                    .toList());
            }
        }

        @Override
        public void handleUpdate(String namespace, Document selector, Document query,
                                 List<Object> modifiedIds) {
            if (!logged(namespace)) {
                return;
            }
            boolean replacement = query.keySet().stream().noneMatch(k -> k.startsWith("$"));
            List<Document> batch = new ArrayList<>();
            for (Object id : modifiedIds) {
                // Called after the update was applied: the stored document is the post-image.
                Document after = find(backend, namespace, id);
                Document o;
                if (replacement) {
                    o = after != null ? after : new Document("_id", id).appendAll(query);
                } else {
                    o = new Document("$v", 2).append("diff", Diff.of(query, after));
                }
                batch.add(entry("u", namespace, o, new Document("_id", id)));
            }
            append(batch);
        }

        @Override
        public void handleDelete(String namespace, Document query, List<Object> deletedIds) {
            if (logged(namespace)) {
                append(deletedIds.stream()
                    .map(id -> entry("d", namespace, new Document("_id", id), null)).toList());
            }
        }

        @Override
        public void handleDropCollection(String namespace) {
            if (logged(namespace)) {
                int dot = namespace.indexOf('.');
                append(List.of(entry("c", namespace.substring(0, dot) + ".$cmd",
                    new Document("drop", namespace.substring(dot + 1)), null)));
            }
        }

        // ---- the cap ----

        private static long millis(Object wall) {
            if (wall instanceof Instant instant) {
                return instant.toEpochMilli();
            }
            if (wall instanceof Date date) {
                return date.getTime();
            }
            return Long.MAX_VALUE; // unknown: never too old
        }

        private void trimLocked() {
            if (!limits.bounded()) {
                return;
            }
            long cutoff = limits.maxAgeMillis() > 0
                ? System.currentTimeMillis() - limits.maxAgeMillis() : Long.MIN_VALUE;
            Map.Entry<Long, Document> removed = null;
            while (true) {
                Map.Entry<Long, Document> head = entries.firstEntry();
                if (head == null) {
                    break;
                }
                boolean noop = "n".equals(head.getValue().get("op"));
                long count = entries.size() - (noop ? 1 : 0);
                Map.Entry<Long, Document> oldest = noop ? entries.higherEntry(head.getKey()) : head;
                if (oldest == null || oldest.getKey().equals(entries.lastKey())) {
                    break; // as MongoDB's, the oplog keeps its newest entry, however old
                }
                boolean tooMany = limits.maxEntries() > 0 && count > limits.maxEntries();
                boolean tooOld = millis(oldest.getValue().get("wall")) < cutoff;
                if (!tooMany && !tooOld) {
                    break;
                }
                if (noop) {
                    remove(head);
                }
                remove(oldest);
                removed = oldest;
            }
            if (removed != null) {
                // The marker takes the timestamp of the newest trimmed entry: a resume point
                // before it has lost history (see checkHistory).
                Document marker = new Document("ts", new BsonTimestamp(removed.getKey()))
                    .append("t", 1L).append("v", 2L)
                    .appendAll(entry("n", "", new Document("msg", TRIMMED), null))
                    .append("wall", removed.getValue().get("wall"));
                store.addDocument(marker);
                entries.put(removed.getKey(), marker);
            }
        }

        private void remove(Map.Entry<Long, Document> entry) {
            entries.remove(entry.getKey());
            store.removeDocument(entry.getValue());
        }

        /**
         * MongoDB: a resume point whose oplog entry is gone (older than the oplog's oldest
         * entry) fails with 286. The first entry is a real one (a start inclusive at it is
         * fine) or the marker of a trimmed one: a token ({@code token} true) at or before the
         * marker has lost its entry. A start time, or an open cursor's position, fails only when
         * entries after it were trimmed.
         */
        void checkHistory(long position, boolean token) {
            Map.Entry<Long, Document> first = entries.firstEntry();
            if (first == null) {
                return;
            }
            Document o = first.getValue().get("o") instanceof Document d ? d : new Document();
            boolean marker = TRIMMED.equals(o.get("msg"));
            long oldest = !marker ? first.getKey() - 1 : token ? first.getKey() + 1
                : first.getKey();
            if (Long.compareUnsigned(position, oldest) < 0) {
                throw ChangeStreamError.historyLost();
            }
        }

        // ---- reading ----

        @Override
        public Cursor createCursor(Document changeStream, String namespace,
                                   Aggregation aggregation) {
            long position;
            boolean fromToken = true;
            if (changeStream.get("startAfter") instanceof Document token) {
                position = Tokens.position(token);
            } else if (changeStream.get("resumeAfter") instanceof Document token) {
                if (Tokens.invalidate(token)) {
                    // MongoDB: only startAfter may continue after an invalidate event.
                    throw new ChangeStreamError(260, "InvalidResumeToken",
                        "Attempting to resume a change stream using 'resumeAfter' is not allowed"
                            + " from an invalidate notification.", List.of());
                }
                position = Tokens.position(token);
            } else if (changeStream.get("startAtOperationTime") instanceof BsonTimestamp time) {
                position = time.getValue() - 1; // inclusive
                fromToken = false;
            } else {
                position = currentTime().getValue();
                fromToken = false;
            }
            checkHistory(position, fromToken);
            ChangeCursor cursor = new ChangeCursor(registry.generateCursorId(), this, namespace,
                "updateLookup".equals(changeStream.get("fullDocument")), aggregation, position);
            registry.add(cursor);
            return cursor;
        }

        /**
         * The change event of {@code entry} for a stream on {@code namespace}, shaped as
         * MongoDB's, or null when the entry is not this stream's.
         */
        Document event(long ts, Document entry, String namespace, boolean lookup) {
            int dot = namespace.indexOf('.');
            String database = namespace.substring(0, dot);
            String collection = namespace.substring(dot + 1);
            Object op = entry.get("op");
            Document o = entry.get("o") instanceof Document d ? d : new Document();
            Document event = new Document("_id", Tokens.token(ts, false));
            BsonTimestamp time = new BsonTimestamp(ts);
            if ("c".equals(op)) {
                if (!entry.get("ns").equals(database + ".$cmd")
                    || !collection.equals(o.get("drop"))) {
                    return null;
                }
                return event.append("operationType", "drop").append("clusterTime", time)
                    .append("ns", new Document("db", database).append("coll", collection));
            }
            if (!namespace.equals(entry.get("ns"))) {
                return null;
            }
            Object id = "u".equals(op) && entry.get("o2") instanceof Document o2
                ? o2.get("_id") : o.get("_id");
            String type = switch (String.valueOf(op)) {
                case "i" -> "insert";
                case "d" -> "delete";
                case "u" -> o.containsKey("$v") && o.get("diff") instanceof Document
                    ? "update" : "replace";
                default -> null;
            };
            if (type == null) {
                return null;
            }
            event.append("operationType", type).append("clusterTime", time)
                .append("ns", new Document("db", database).append("coll", collection))
                .append("documentKey", new Document("_id", id));
            switch (type) {
                case "insert", "replace" -> event.append("fullDocument", o.cloneDeeply());
                case "update" -> {
                    Document diff = (Document) o.get("diff");
                    Document updated = diff.get("u") instanceof Document u
                        ? u.cloneDeeply() : new Document();
                    List<String> removedFields = diff.get("d") instanceof Document d
                        ? new ArrayList<>(d.keySet()) : new ArrayList<>();
                    event.append("updateDescription", new Document("updatedFields", updated)
                        .append("removedFields", removedFields)
                        .append("truncatedArrays", new ArrayList<>()));
                    if (lookup) {
                        // MongoDB looks the document up when the event is read: null if gone.
                        event.append("fullDocument", find(backend, namespace, id));
                    }
                }
                default -> {
                }
            }
            return event;
        }

        /** The current version of a document by id (the database name ends at the first dot). */
        static Document find(MongoBackend backend, String namespace, Object id) {
            int dot = namespace.indexOf('.');
            MongoCollection<?> collection = id == null || dot < 0 ? null
                : backend.resolveDatabase(namespace.substring(0, dot))
                    .resolveCollection(namespace.substring(dot + 1), false);
            return collection == null ? null
                : collection.handleQueryAsStream(new Document("_id", id)).findFirst()
                    .map(Document::cloneDeeply).orElse(null);
        }
    }

    /**
     * Resume tokens as MongoDB's begin: {@code _data} is hex of a KeyString whose first value is
     * the event's cluster time ({@code 82}, BSON timestamp's type byte in KeyString, then the
     * timestamp's 8 bytes big-endian), so a client can read a token's time as it can from
     * MongoDB's. An invalidate event's token has a suffix. Anything else is not ours: refused.
     */
    private static final class Tokens {

        private static final String PREFIX = "82";
        private static final String INVALIDATE = "ff";
        private static final int LENGTH = PREFIX.length() + 16;

        private Tokens() {
        }

        static Document token(long ts, boolean invalidate) {
            String hex = String.format("%016x", ts);
            return new Document("_data", PREFIX + hex + (invalidate ? INVALIDATE : ""));
        }

        static boolean invalidate(Document token) {
            return token.get("_data") instanceof String data
                && data.length() == LENGTH + INVALIDATE.length() && data.endsWith(INVALIDATE);
        }

        /** A malformed token fails with the library's old message (NumberFormatException). */
        static long position(Document token) {
            String data = String.valueOf(token.get("_data"));
            if (invalidate(token)) {
                data = data.substring(0, LENGTH);
            }
            if (data.length() != LENGTH || !data.regionMatches(true, 0, PREFIX, 0, 2)) {
                throw new NumberFormatException("For input string: \"" + data + "\"");
            }
            return Long.parseUnsignedLong(data.substring(PREFIX.length()), 16);
        }
    }

    /**
     * A change stream's cursor. Each batch scans the oplog from the cursor's position on (not
     * from its beginning), shapes each entry of its collection as MongoDB's event, then runs the
     * client's stages on it. The position moves past every entry scanned, matched or not, and is
     * the batch's {@code postBatchResumeToken} (MongoDB 4.0.7+).
     */
    static final class ChangeCursor extends AbstractCursor {

        /** The cursor that the current command read, for the reply's postBatchResumeToken. */
        static final ThreadLocal<ChangeCursor> LAST = new ThreadLocal<>();

        private final LiberatorOplog oplog;
        private final String namespace;
        private final boolean lookup;
        private final Aggregation aggregation;
        private long position;
        private boolean invalidated;

        ChangeCursor(long id, LiberatorOplog oplog, String namespace, boolean lookup,
                     Aggregation aggregation, long position) {
            super(id);
            this.oplog = oplog;
            this.namespace = namespace;
            this.lookup = lookup;
            this.aggregation = aggregation;
            this.position = position;
        }

        @Override
        public boolean isEmpty() {
            return invalidated;
        }

        Document postBatchResumeToken() {
            return Tokens.token(position, invalidated);
        }

        @Override
        public synchronized List<Document> takeDocuments(int numberToReturn) {
            LAST.set(this);
            List<Document> batch = new ArrayList<>();
            if (invalidated) {
                return batch;
            }
            long start = position;
            oplog.checkHistory(start, false);
            for (Map.Entry<Long, Document> entry : oplog.entries.tailMap(start, false)
                .entrySet()) {
                if (numberToReturn > 0 && batch.size() >= numberToReturn) {
                    break;
                }
                long ts = entry.getKey();
                Document event = oplog.event(ts, entry.getValue(), namespace, lookup);
                position = ts;
                if (event == null) {
                    continue;
                }
                if ("drop".equals(event.get("operationType"))) {
                    // MongoDB: a dropped collection's stream ends with drop, then invalidate
                    // (which no client stage filters out).
                    batch.addAll(aggregation.runStages(java.util.stream.Stream.of(event)));
                    batch.add(new Document("_id", Tokens.token(ts, true))
                        .append("operationType", "invalidate")
                        .append("clusterTime", new BsonTimestamp(ts)));
                    invalidated = true;
                    break;
                }
                batch.addAll(aggregation.runStages(java.util.stream.Stream.of(event)));
            }
            // A trim that overtook the scan removed entries it might not have seen.
            oplog.checkHistory(start, false);
            return batch;
        }
    }

    /**
     * The {@code diff} of an update entry, from the update operators and the post-image: which
     * fields now have which values ({@code u}) and which were removed ({@code d}). It gives the
     * event's {@code updateDescription}; paths are the operators' own (dotted) paths, and a
     * positional path reports its whole top-level field.
     */
    private static final class Diff {

        private static final Set<String> SETTING = Set.of("$set", "$inc", "$mul", "$min", "$max",
            "$currentDate", "$push", "$addToSet", "$pull", "$pullAll", "$pop", "$bit");

        private Diff() {
        }

        static Document of(Document update, Document after) {
            Document updated = new Document();
            Document removed = new Document();
            update.forEach((operator, value) -> {
                if (!(value instanceof Document fields)) {
                    return;
                }
                for (String path : fields.keySet()) {
                    if (operator.equals("$unset")) {
                        removed.put(path, Boolean.FALSE);
                    } else if (operator.equals("$rename")) {
                        removed.put(path, Boolean.FALSE);
                        if (fields.get(path) instanceof String target) {
                            set(updated, target, after);
                        }
                    } else if (SETTING.contains(operator)) {
                        set(updated, path, after);
                    }
                }
            });
            return new Document("u", updated).append("d", removed);
        }

        private static void set(Document updated, String path, Document after) {
            String key = path.contains(".$") || path.startsWith("$")
                ? path.substring(0, Math.max(0, path.indexOf('.'))) : path;
            if (key.isEmpty()) {
                key = path;
            }
            Object value = valueAt(after, key);
            if (value != Absent.VALUE) {
                updated.put(key, value instanceof Document d ? d.cloneDeeply() : value);
            }
        }

        private enum Absent { VALUE }

        private static Object valueAt(Object current, String path) {
            for (String part : path.split("\\.")) {
                if (current instanceof Document document && document.containsKey(part)) {
                    current = document.get(part);
                } else if (current instanceof List<?> list && part.chars().allMatch(
                    Character::isDigit) && !part.isEmpty() && Integer.parseInt(part) < list.size()) {
                    current = list.get(Integer.parseInt(part));
                } else {
                    return Absent.VALUE;
                }
            }
            return current;
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
                    && !unchanged(backend, namespace, query, document)) {
                    oplog.handleUpdate(namespace, selector, update, List.of(document.get("_id")));
                }
            } else if (Boolean.TRUE.equals(query.get("upsert"))) {
                // An upsert inserted a document: read it back (it matches the selector).
                Object id = value instanceof Document after ? after.get("_id") : null;
                Document inserted = id != null ? LiberatorOplog.find(backend, namespace, id)
                    : current(backend, database, collection, selector);
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
        private static boolean unchanged(MongoBackend backend, String namespace, Document query,
                                         Document before) {
            if (Boolean.TRUE.equals(query.get("new")) || query.get("fields") != null) {
                return false;
            }
            return before.equals(LiberatorOplog.find(backend, namespace, before.get("_id")));
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
