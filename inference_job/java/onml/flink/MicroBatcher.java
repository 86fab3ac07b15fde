package onml.flink;

import java.util.ArrayList;
import java.util.concurrent.ScheduledFuture;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Groups records into arrays of at most {@code maxSize} that wait at most {@code maxWaitMs}.
 *
 * <p>A batch leaves when it is full, when a processing-time timer set by its first record
 * fires, before every checkpoint barrier and at the end of the input. Emitting before the
 * barrier means a checkpoint never covers a record that is still in the buffer. The
 * operator therefore has no state of its own, and a restart from a checkpoint reads again
 * every record that had not left the buffer.
 *
 * <p>The operator is not keyed: each parallel instance batches what its own input
 * partitions deliver, and the Python function downstream is called once per batch.
 */
public final class MicroBatcher extends AbstractStreamOperator<String[]>
        implements OneInputStreamOperator<String, String[]>, ProcessingTimeCallback {

    private static final long serialVersionUID = 1L;
    private static final String[] EMPTY = new String[0];

    private final int maxSize;
    private final long maxWaitMs;

    private transient ArrayList<String> buffer;
    private transient ScheduledFuture<?> timer;

    public MicroBatcher(int maxSize, long maxWaitMs) {
        if (maxSize < 1) {
            throw new IllegalArgumentException("maxSize must be at least 1, got " + maxSize);
        }
        if (maxWaitMs < 0) {
            throw new IllegalArgumentException("maxWaitMs must be 0 or more, got " + maxWaitMs);
        }
        this.maxSize = maxSize;
        this.maxWaitMs = maxWaitMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new ArrayList<>(maxSize);
    }

    @Override
    public void processElement(StreamRecord<String> element) {
        buffer.add(element.getValue());
        if (buffer.size() >= maxSize) {
            emit();
        } else if (buffer.size() == 1) {
            long now = getProcessingTimeService().getCurrentProcessingTime();
            timer = getProcessingTimeService().registerTimer(now + maxWaitMs, this);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        // A timer whose batch left by size was cancelled, so one that fires belongs to the
        // batch in the buffer now.
        timer = null;
        emit();
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        emit();
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    private void emit() {
        if (timer != null) {
            timer.cancel(false);
            timer = null;
        }
        if (buffer.isEmpty()) {
            return;
        }
        output.collect(new StreamRecord<>(buffer.toArray(EMPTY)));
        buffer.clear();
    }
}
