import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.util.List;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.oplog.Oplog;
import io.netty.channel.Channel;

/**
 * Starts mongo-java-server with its oplog enabled (so change streams work) on a given host and
 * port. The library's own main classes bind 27017 and leave the oplog off, hence this launcher.
 *
 * <p>Usage: {@code java LiberatorMongo HOST PORT memory|h2:FILE}
 *
 * <p>Two shims make current pymongo (4.x) work against the emulator; both are documented in
 * docs/local-stack-mongo.md:
 * <ul>
 *   <li>it reports MongoDB 5.0 with wire version 13 (the library's own 5.0 says wire version 8,
 *       which pymongo refuses: it needs 9 or more);</li>
 *   <li>an {@code aggregate} reply carries {@code operationTime}, as a replica set's does. pymongo
 *       requires it when a change stream opens with an empty first batch and no resume token.</li>
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
        OperationTime.check(backend);
        // A SIGTERM runs this hook: closing the backend flushes and closes the H2 file, so a
        // restart on the same file finds every acknowledged write and the oplog.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("liberator-mongo: shutting down");
            server.shutdownNow();
            System.out.println("liberator-mongo: stopped");
            System.out.flush();
        }, "liberator-mongo-shutdown"));
        try {
            server.bind(host, port);
        } catch (RuntimeException e) {
            // Netty's threads would keep the JVM alive after a failed bind: exit instead.
            fail("cannot listen on " + host + ":" + port + ": " + e);
        }
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
                    BsonTimestamp before = OperationTime.next(oplog);
                    return OperationTime.add(command, before,
                        super.handleCommand(channel, database, command, query));
                }
            };
        }
        if (spec.startsWith("h2:") && spec.length() > 3) {
            return new H2Backend(spec.substring(3)) {
                @Override
                public Document handleCommand(Channel channel, String database, String command,
                                              Document query) {
                    BsonTimestamp before = OperationTime.next(oplog);
                    return OperationTime.add(command, before,
                        super.handleCommand(channel, database, command, query));
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

        private static Field clockField;
        private static Method nowMethod;

        private OperationTime() {
        }

        /** Fails at start (not on the first watch) if the library's internals have moved. */
        static void check(MongoBackend backend) {
            if (!(backend instanceof de.bwaldvogel.mongo.backend.AbstractMongoBackend)) {
                fail("unexpected backend class " + backend.getClass());
            }
            try {
                Field oplogField = de.bwaldvogel.mongo.backend.AbstractMongoBackend.class
                    .getDeclaredField("oplog");
                oplogField.setAccessible(true);
                Object oplog = oplogField.get(backend);
                clockField = oplog.getClass().getDeclaredField("oplogClock");
                clockField.setAccessible(true);
                Object clock = clockField.get(oplog);
                nowMethod = clock.getClass().getDeclaredMethod("now");
                nowMethod.setAccessible(true);
                nowMethod.invoke(clock);
            } catch (ReflectiveOperationException | RuntimeException e) {
                fail("cannot read the oplog clock of this mongo-java-server version (" + e
                    + "); pin the version in hack/mongo/pom.xml");
            }
        }

        static BsonTimestamp next(Oplog oplog) {
            if (nowMethod == null || oplog == null) {
                return null;
            }
            try {
                BsonTimestamp now = (BsonTimestamp) nowMethod.invoke(clockField.get(oplog));
                // Timestamps order as (seconds << 32 | increment); the next entry is at least +1.
                return new BsonTimestamp(now.getValue() + 1);
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
}
