<?php
// A PHP worker that behaves as swarrot's does (SwarrotBundle stack: ack -> retry -> callback), with php-amqplib:
// a basic.get poller (swarrot's PhpAmqpLibMessageProvider), a RetryProcessor that republishes a failed message to
// exchange `retry` with routing key `<queue>_retry_<attempt>` and the header `swarrot_retry_attempts`, and past its
// attempts re-raises, so the ack processor nacks without requeue and RabbitMQ dead-letters it through `dl` into
// `<queue>_dl`. For swarrow's interop tests (tests/interop/): each call appends "php <id> <retries seen> ok|fail".
//
//   php swarrot_worker.php --queue Q --out FILE [--port 5672] [--attempts 3] [--max-messages N] [--idle-seconds 3]
//                          [--fail-all]
//
// The body is JSON {"id": ..., "fail": K}: the callback fails while the retries seen are fewer than K ("always": every
// time; --fail-all: every message, a PHP worker with a bug).
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

$opts = getopt('', ['queue:', 'out:', 'port:', 'attempts:', 'max-messages:', 'idle-seconds:', 'fail-all']);
$failAll = isset($opts['fail-all']);
$queue = $opts['queue'];
$out = fopen($opts['out'], 'a');
$maxAttempts = (int) ($opts['attempts'] ?? 3);
$maxMessages = (int) ($opts['max-messages'] ?? 0);
$idleSeconds = (float) ($opts['idle-seconds'] ?? 3);

$connection = new AMQPStreamConnection('127.0.0.1', (int) ($opts['port'] ?? 5672), 'guest', 'guest');
$channel = $connection->channel();
$channel->confirm_select();

function headers_of(AMQPMessage $message): array {
    return $message->has('application_headers') ? $message->get('application_headers')->getNativeData() : [];
}

function callback(AMQPMessage $message, $out, bool $failAll): void {
    $headers = headers_of($message);
    $seen = max((int) ($headers['swarrot_retry_attempts'] ?? 0), (int) ($headers['x-swarrow-attempt'] ?? 0));
    $job = json_decode($message->getBody(), true);
    $fail = $failAll || $job['fail'] === 'always' || $seen < (int) $job['fail'];
    fwrite($out, sprintf("php %s %d %s\n", $job['id'], $seen, $fail ? 'fail' : 'ok'));
    fflush($out);
    if ($fail) {
        throw new RuntimeException('php says no to ' . $job['id']);
    }
}

function retry(AMQPMessage $message, $channel, string $queue, int $maxAttempts, $out, bool $failAll): void {
    try {
        callback($message, $out, $failAll);
    } catch (Exception $e) {
        $headers = headers_of($message);
        $attempts = (int) ($headers['swarrot_retry_attempts'] ?? 0) + 1;
        if ($attempts > $maxAttempts) {
            throw $e;
        }
        $headers['swarrot_retry_attempts'] = $attempts;
        $properties = $message->get_properties();
        $properties['application_headers'] = new AMQPTable($headers);
        $copy = new AMQPMessage($message->getBody(), $properties);
        $channel->basic_publish($copy, 'retry', sprintf('%s_retry_%d', $queue, $attempts));
        $channel->wait_for_pending_acks(10);
    }
}

$processed = 0;
$idleSince = microtime(true);
while ($maxMessages === 0 || $processed < $maxMessages) {
    $message = $channel->basic_get($queue);
    if ($message === null) {
        if (microtime(true) - $idleSince > $idleSeconds) {
            break;
        }
        usleep(50000);
        continue;
    }
    $idleSince = microtime(true);
    try {
        retry($message, $channel, $queue, $maxAttempts, $out, $failAll);
        $message->ack();
    } catch (Exception $e) {
        $message->nack(false);  // no requeue: RabbitMQ dead-letters it through `dl` into <queue>_dl
    }
    $processed++;
}
$channel->close();
$connection->close();
